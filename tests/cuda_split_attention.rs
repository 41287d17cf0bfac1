//! The CUDA engine's split ("flash-decoding") attention with chunks of 16
//! positions, so that the small fixtures' contexts span several chunks: the
//! GPU checks of `tests/cuda.rs` again. Its own process, because the chunk
//! size is read from the environment when a model loads. Skips, saying why,
//! without a GPU.

mod common;
use common::gpu::*;
use common::*;

#[test]
fn split_attention_keeps_parity_batch_invariance_and_losslessness() {
    std::env::set_var("LAYERSKIP_CUDA_ATTN_CHUNK", "16");
    for name in FIXTURES {
        let Some(model) = gpu_model(name, "split attention") else {
            return;
        };
        check_parity(name, &model);
        // 40 rows: three chunks, rows on both sides of each boundary.
        check_batch_invariance(name, &model, &prompts(name)[2]);
        check_lossless(name, &model, &prompts(name)[2]);
    }
}
