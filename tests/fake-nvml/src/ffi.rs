//! The plumbing every exported function shares: no panic unwinds into C, one line
//! on stderr for what went wrong, and checked writes through the caller's pointers.

use std::ffi::{c_char, c_uint};
use std::io::Write as _;
use std::panic::{AssertUnwindSafe, catch_unwind};

use crate::abi::{
    NVML_ERROR_INSUFFICIENT_SIZE, NVML_ERROR_INVALID_ARGUMENT, NVML_ERROR_UNKNOWN, NVML_SUCCESS, NvmlReturn,
};

/// Runs an exported function's body; a panic becomes `NVML_ERROR_UNKNOWN`
/// instead of unwinding into C.
pub(crate) fn ffi(body: impl FnOnce() -> NvmlReturn) -> NvmlReturn {
    catch_unwind(AssertUnwindSafe(body)).unwrap_or(NVML_ERROR_UNKNOWN)
}

pub(crate) fn report(line: &str) {
    // One line; a failing stderr is ignored rather than panicking.
    let _ = writeln!(std::io::stderr().lock(), "{line}");
}

/// Copies `value` and a NUL into the caller's buffer of `length` bytes.
///
/// # Safety
///
/// `buffer` is null or valid for `length` bytes of writes.
pub(crate) unsafe fn write_str(buffer: *mut c_char, length: c_uint, value: &str) -> NvmlReturn {
    if buffer.is_null() {
        return NVML_ERROR_INVALID_ARGUMENT;
    }
    let bytes = value.as_bytes();
    if bytes.len() >= usize::try_from(length).unwrap_or(usize::MAX) {
        return NVML_ERROR_INSUFFICIENT_SIZE;
    }
    // SAFETY: the caller guarantees `length` writable bytes and we write
    // `bytes.len() + 1 <= length` of them.
    unsafe {
        std::ptr::copy_nonoverlapping(bytes.as_ptr().cast::<c_char>(), buffer, bytes.len());
        buffer.add(bytes.len()).write(0);
    }
    NVML_SUCCESS
}

/// Writes `value` through `out` unless it is null.
///
/// # Safety
///
/// `out` is null or valid for a write of `T`.
pub(crate) unsafe fn write_out<T>(out: *mut T, value: T) -> NvmlReturn {
    if out.is_null() {
        return NVML_ERROR_INVALID_ARGUMENT;
    }
    // SAFETY: non-null and, per the caller, valid for writes.
    unsafe { out.write(value) };
    NVML_SUCCESS
}

/// A fixed-size C string field holding `value` (truncated if it had to be).
pub(crate) fn c_field<const N: usize>(value: &str) -> [c_char; N] {
    let mut field = [0 as c_char; N];
    for (slot, byte) in field.iter_mut().zip(value.bytes().take(N.saturating_sub(1))) {
        *slot = byte as c_char;
    }
    field
}
