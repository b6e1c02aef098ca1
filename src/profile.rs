//! libtorch's Kineto profiler (the one `torch.profiler` drives) around a region of code, through
//! `csrc/profile.cpp`: a Chrome trace file and a text summary of where the time went (CPU operators
//! by self time, device kernels by device time).

use std::ffi::{CStr, CString};
use std::path::Path;

use anyhow::{anyhow, Context, Result};

use crate::ffi::{call, pixelseq_free, pixelseq_profile_start, pixelseq_profile_stop};

/// The profiler while it runs; dropped without [`Session::finish`] (an error or a panic in the
/// region), it stops the profiler and discards the profile.
struct Session {
    running: bool,
}

impl Session {
    fn start(cuda: bool) -> Result<Session> {
        // SAFETY: a plain call with an error buffer of the stated length.
        call("cannot start libtorch's profiler", |err, len| unsafe {
            pixelseq_profile_start(cuda, err, len)
        })?;
        Ok(Session { running: true })
    }

    /// Stops the profiler, writes the Chrome trace to `trace` and returns the summary table.
    fn finish(mut self, trace: &CString, shown: &Path) -> Result<String> {
        self.running = false;
        let mut summary: *mut std::ffi::c_char = std::ptr::null_mut();
        // SAFETY: a NUL-terminated path, an out pointer and an error buffer.
        call(
            &format!("cannot stop libtorch's profiler or save `{}`", shown.display()),
            |err, len| unsafe { pixelseq_profile_stop(trace.as_ptr(), &mut summary, err, len) },
        )?;
        // SAFETY: on success `summary` is a malloc'd C string, copied here and released with the
        // shim's free.
        Ok(unsafe {
            let text = CStr::from_ptr(summary).to_string_lossy().into_owned();
            pixelseq_free(summary);
            text
        })
    }
}

impl Drop for Session {
    fn drop(&mut self) {
        if self.running {
            // SAFETY: a null trace path stops the profiler and discards its profile; nothing to
            // report from a drop.
            let _ = call("stopping libtorch's profiler", |err, len| unsafe {
                pixelseq_profile_stop(std::ptr::null(), std::ptr::null_mut(), err, len)
            });
        }
    }
}

/// Runs `f` under the profiler (CPU operators, and CUDA kernels when `cuda`), writes the Chrome
/// trace to `trace` (beside it first, then renamed into place, as [`crate::files`] writes) and
/// returns the summary table with `f`'s result.
/// libtorch has one profiler per process, so concurrent calls take turns.
pub fn profile<T>(cuda: bool, trace: &Path, f: impl FnOnce() -> Result<T>) -> Result<(T, String)> {
    static ONE_AT_A_TIME: std::sync::Mutex<()> = std::sync::Mutex::new(());
    let _turn = ONE_AT_A_TIME.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
    let session = Session::start(cuda)?;
    let out = f();
    let mut text = String::new();
    crate::files::write_through(trace, |tmp| {
        let path = CString::new(tmp.to_string_lossy().as_bytes()).map_err(|_| anyhow!("`{}`: a NUL in the path", trace.display()))?;
        text = session.finish(&path, trace)?;
        Ok(())
    })?;
    Ok((out.context("the profiled steps failed")?, text))
}

#[cfg(test)]
mod tests {
    use tch::{Device, Kind, Tensor};

    #[test]
    fn profile_names_the_operators_and_writes_a_trace() {
        let dir = tempfile::tempdir().unwrap();
        let trace = dir.path().join("trace.json");
        let a = Tensor::randn([64, 64], (Kind::Float, Device::Cpu));
        let (sum, summary) = super::profile(false, &trace, || Ok(a.mm(&a).relu().sum(Kind::Float).double_value(&[]))).unwrap();
        assert!(sum.is_finite());
        assert!(summary.starts_with("# CPU operators by self time"), "{summary}");
        assert!(summary.contains("\taten::mm\n") && summary.contains("\taten::relu\n"), "{summary}");
        let text = std::fs::read_to_string(&trace).unwrap();
        assert!(text.contains("traceEvents") && text.contains("aten::mm"), "not a Chrome trace");
    }

    #[test]
    fn a_failing_region_still_stops_the_profiler() {
        let dir = tempfile::tempdir().unwrap();
        let err = super::profile(false, &dir.path().join("t.json"), || -> anyhow::Result<()> {
            anyhow::bail!("boom")
        })
        .unwrap_err();
        assert!(format!("{err:#}").contains("boom"));
        let (_, summary) = super::profile(false, &dir.path().join("u.json"), || Ok(())).unwrap();
        assert!(summary.starts_with("# CPU"));
    }

    #[test]
    fn a_panicking_region_still_stops_the_profiler() {
        let dir = tempfile::tempdir().unwrap();
        let trace = dir.path().join("p.json");
        let caught = std::panic::catch_unwind(|| super::profile(false, &trace, || -> anyhow::Result<()> { panic!("inside") }));
        assert!(caught.is_err());
        let (_, summary) = super::profile(false, &dir.path().join("v.json"), || Ok(())).unwrap();
        assert!(summary.starts_with("# CPU"), "the profiler was left running: {summary}");
    }
}
