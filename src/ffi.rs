//! The calling convention of the C++ shims in `csrc/`: each function returns false on a libtorch
//! exception and leaves its message in an error buffer.

use std::ffi::{c_char, CStr};

use anyhow::{bail, Result};
use tch::Tensor;
use torch_sys::C_tensor;

/// Runs one shim call with an error buffer; libtorch's first message line becomes the error,
/// prefixed with `what`.
pub(crate) fn call(what: &str, f: impl FnOnce(*mut c_char, usize) -> bool) -> Result<()> {
    let mut err = [0 as c_char; 1024];
    if f(err.as_mut_ptr(), err.len()) {
        return Ok(());
    }
    // SAFETY: the shim wrote a NUL-terminated message (snprintf) into the zeroed buffer.
    let msg = unsafe { CStr::from_ptr(err.as_ptr()) }.to_string_lossy();
    bail!("{what}: {}", msg.lines().next().unwrap_or_default())
}

/// [`call`] for a shim that returns a new tensor through an out pointer: on success the shim
/// stored a heap tensor there, which the returned [`Tensor`] owns.
pub(crate) fn call_for_tensor(what: &str, f: impl FnOnce(*mut *mut C_tensor, *mut c_char, usize) -> bool) -> Result<Tensor> {
    let mut out: *mut C_tensor = std::ptr::null_mut();
    call(what, |err, len| f(&mut out, err, len))?;
    // SAFETY: the shim succeeded, so `out` is a tensor it allocated for us to own.
    Ok(unsafe { Tensor::from_ptr(out) })
}
