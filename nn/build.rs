//! Links the system BLAS for the `openblas` feature. Debian's
//! `libopenblas-dev` provides `libopenblas.so` with the cblas symbols; set
//! `OPENBLAS_LIB_DIR` to link one from another directory.
//! (openblas-src is not used: its build helper insists on TLS download
//! support even for a system library.)

fn main() {
    println!("cargo:rerun-if-env-changed=OPENBLAS_LIB_DIR");
    if std::env::var_os("CARGO_FEATURE_OPENBLAS").is_some() {
        if let Some(dir) = std::env::var_os("OPENBLAS_LIB_DIR") {
            println!("cargo:rustc-link-search=native={}", dir.to_string_lossy());
        }
        println!("cargo:rustc-link-lib=openblas");
    }
}
