//! config.json parsing: any text gives a config or an error, never a panic.
#![no_main]
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(text) = std::str::from_utf8(data) {
        if let Ok(cfg) = layerskip::ModelConfig::from_json(text, "config.json") {
            // Accepted configs have sane, consistent sizes.
            assert!(cfg.num_layers >= 1 && cfg.vocab_size >= 1);
            assert_eq!(cfg.num_heads % cfg.num_kv_heads, 0);
        }
    }
});
