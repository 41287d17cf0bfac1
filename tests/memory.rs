//! A loaded model holds its weights once: the engine's packed copy, not the
//! checkpoint's mapped pages as well. (Its own binary: it reads the
//! process's memory figures from `/proc/self/status`, Linux only.)

use layerskip::Model;

/// A field of `/proc/self/status` in bytes (`VmRSS`, `RssFile`, ...).
fn status(field: &str) -> usize {
    let text = std::fs::read_to_string("/proc/self/status").unwrap();
    let line = text
        .lines()
        .find(|l| l.starts_with(&format!("{field}:")))
        .unwrap_or_else(|| panic!("/proc/self/status has no {field}"));
    let kib: usize = line.split_whitespace().nth(1).unwrap().parse().unwrap();
    kib << 10
}

#[test]
#[cfg(target_os = "linux")]
fn a_loaded_model_is_resident_once() {
    let dir = concat!(env!("CARGO_MANIFEST_DIR"), "/assets/layerskip-pycode-8l");
    let file = std::fs::metadata(format!("{dir}/model.safetensors"))
        .unwrap()
        .len() as usize;
    // A first load faults in the code and starts the worker threads, so the
    // second one measures the weights alone.
    drop(Model::load(dir).unwrap());
    // Writing 5 resets the peak (VmHWM) to the current RSS.
    std::fs::write("/proc/self/clear_refs", "5").unwrap();
    let (rss0, file0) = (status("VmRSS"), status("RssFile"));
    let model = Model::load(dir).unwrap();
    let peak = status("VmHWM") - rss0;
    let mapped = status("RssFile").saturating_sub(file0);
    let mb = |b: usize| b as f64 / 1e6;
    println!(
        "checkpoint {:.1} MB: peak growth {:.1} MB while loading, {:.1} MB of it still mapped",
        mb(file),
        mb(peak),
        mb(mapped)
    );
    // Without releasing the mapped pages both figures are about the
    // checkpoint's size more: peak 1.9x, mapped 1x. The 2 MiB allow for
    // what any load holds for a while, whatever the model's size (the
    // tokenizer, a large folio of the page cache per matrix being read).
    assert!(
        peak <= file + file / 10 + (2 << 20),
        "loading peaked at {:.2}x the checkpoint",
        peak as f64 / file as f64
    );
    assert!(
        mapped <= file / 10,
        "{:.1} MB of the checkpoint's pages stay resident",
        mb(mapped)
    );
    assert_eq!(model.num_layers(), 8);
}
