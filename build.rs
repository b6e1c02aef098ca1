//! Link libtorch_cuda into the binaries even though no symbol of it is referenced directly:
//! without `--no-as-needed` the linker drops it and CUDA is silently unavailable at run time.
//! Every executable also records libtorch's folder as its run path, so it starts without
//! `LD_LIBRARY_PATH` on the machine that built it; elsewhere `LD_LIBRARY_PATH` (searched first)
//! points at that machine's `torch/lib`. `csrc/` (libtorch's fused multi-tensor kernels, its
//! Kineto profiler, its per-device autocast state and its CUDA graphs, which tch does not wrap, a
//! multithreaded CPU dropout mask, FNet's Fourier mixing with half the transforms, a caching CPU
//! allocator, c10d's distributed backends and the TorchScript export's input checks) is compiled
//! against the same libtorch's headers.

fn main() {
    commit();
    println!("cargo:rerun-if-env-changed=DEP_TCH_LIBTORCH_LIB");
    let lib = std::env::var("DEP_TCH_LIBTORCH_LIB").expect("torch-sys reports libtorch's folder (DEP_TCH_LIBTORCH_LIB)");
    println!("cargo:rustc-link-arg=-Wl,-rpath,{lib}");
    let dir = std::path::Path::new(&lib);
    if dir.join("libtorch_cuda.so").exists() {
        println!("cargo:rustc-link-arg-bins=-Wl,--no-as-needed,-ltorch_cuda,--as-needed");
    }
    csrc(dir);
}

/// Compiles the C++ shims with torch-sys's flags: C++17 and the new libstdc++ ABI of the PyTorch
/// wheels; headers sit beside the library folder in `torch/include`. libtorch's headers are
/// system headers (`-isystem`: their warnings are libtorch's), the shims' own code is compiled
/// with `-Wall -Wextra`.
fn csrc(lib: &std::path::Path) {
    println!("cargo:rerun-if-changed=csrc");
    let include = lib.parent().expect("libtorch's lib folder has a parent").join("include");
    let mut build = cc::Build::new();
    build.cpp(true);
    for file in [
        "autocast",
        "cpu_allocator",
        "cuda_graph",
        "dist",
        "dist_nccl",
        "dropout",
        "fourier",
        "multi_tensor",
        "profile",
        "script",
    ] {
        build.file(format!("csrc/{file}.cpp"));
    }
    let mut system = vec![include.clone(), include.join("torch/csrc/api/include")];
    match cuda_headers(lib) {
        Ok(dirs) => {
            system.extend(dirs);
            build.define("PIXELSEQ_NCCL", None);
            build.define("PIXELSEQ_CUDA", None);
            println!("cargo:rustc-link-lib=dylib=c10_cuda");
        }
        Err(why) => println!("cargo:warning=building without NCCL and CUDA graphs: {why}"),
    }
    for dir in system {
        build.flag("-isystem").flag(dir.to_str().expect("include folders are UTF-8"));
    }
    build.include("csrc/gloo_decls");
    build
        .flag("-std=c++17")
        .flag("-D_GLIBCXX_USE_CXX11_ABI=1")
        .warnings(true)
        .extra_warnings(true)
        .compile("pixelseq_csrc");
}

/// The headers c10d's NCCL backend (`csrc/dist_nccl.cpp`) and CUDA graphs (`csrc/cuda_graph.cpp`)
/// need: NCCL's and the CUDA runtime's from the torch wheel's dependencies beside `torch/`
/// (`nvidia/nccl`, `nvidia/cu13`), the CUDA C runtime and CCCL headers they include from
/// `$PIXELSEQ_CUDA_HEADERS` (installed by scripts/env.sh). Only when libtorch has CUDA.
fn cuda_headers(lib: &std::path::Path) -> Result<Vec<std::path::PathBuf>, String> {
    println!("cargo:rerun-if-env-changed=PIXELSEQ_CUDA_HEADERS");
    if !lib.join("libtorch_cuda.so").exists() {
        return Err(format!("`{}` has no libtorch_cuda.so", lib.display()));
    }
    let nvidia = lib.join("../../nvidia");
    let extra = std::env::var_os("PIXELSEQ_CUDA_HEADERS")
        .map(|d| std::path::PathBuf::from(d).join("nvidia/cu13/include"))
        .ok_or("$PIXELSEQ_CUDA_HEADERS is not set (scripts/env.sh sets it)")?;
    let dirs = [extra, nvidia.join("cu13/include"), nvidia.join("nccl/include")];
    for (dir, file) in dirs.iter().zip(["crt/host_config.h", "cuda_runtime_api.h", "nccl.h"]) {
        if !dir.join(file).is_file() {
            return Err(format!("`{}` not found", dir.join(file).display()));
        }
    }
    Ok(dirs.to_vec())
}

/// The commit the binary is built from, recorded in every run's `result.json` (the binary may run
/// where there is no checkout, e.g. on a GPU machine).
fn commit() {
    // Only paths that exist: cargo reruns the build script (and recompiles `csrc/`) on every build
    // for a path that does not. In a worktree `.git` is a file naming its own git folder.
    let git = |arg: &str| {
        std::process::Command::new("git")
            .args(["rev-parse", arg])
            .output()
            .ok()
            .filter(|o| o.status.success())
            .map(|o| std::path::PathBuf::from(String::from_utf8_lossy(&o.stdout).trim()))
    };
    if let (Some(dir), Some(common)) = (git("--git-dir"), git("--git-common-dir")) {
        for path in [dir.join("HEAD"), common.join("refs/heads"), common.join("packed-refs")] {
            if path.exists() {
                println!("cargo:rerun-if-changed={}", path.display());
            }
        }
    }
    let commit = std::process::Command::new("git")
        .args(["rev-parse", "--short=12", "HEAD"])
        .output()
        .ok()
        .filter(|o| o.status.success())
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
        .unwrap_or_else(|| "unknown".into());
    println!("cargo:rustc-env=PIXELSEQ_COMMIT={commit}");
}
