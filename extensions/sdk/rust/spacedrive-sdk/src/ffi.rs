//! The host functions of docs/abi.md and the only `unsafe` code of the SDK.
//!
//! Everything else in the SDK goes through the safe wrappers below: `call` (send a request with an output
//! buffer through `spacedrive_call_into`; only an envelope that does not fit takes the second host call,
//! `spacedrive_result`), `input` and `log`.

#[cfg(target_arch = "wasm32")]
#[link(wasm_import_module = "spacedrive")]
extern "C" {
    fn spacedrive_call_into(method_ptr: *const u8, method_len: i32, library_ptr: *const u8, payload_ptr: *const u8,
                            payload_len: i32, out_ptr: *mut u8, out_cap: i32) -> i32;
    fn spacedrive_result(out_ptr: *mut u8, out_cap: i32) -> i32;
    fn spacedrive_input(out_ptr: *mut u8, out_cap: i32) -> i32;
    fn spacedrive_log(level: i32, ptr: *const u8, len: i32);
}

/// A negative return of the ABI: -1 a range outside linear memory, -2 a request over the size cap.
pub type Fault = i32;

/// The output buffer `call` offers: most envelopes (statuses, small results, errors) fit in one page.
#[cfg(target_arch = "wasm32")]
const FIRST_BUFFER: usize = 4096;

/// Lengths cross the ABI as i32; anything longer is a request over every cap the host has.
fn len32(bytes: &[u8]) -> Result<i32, Fault> {
    i32::try_from(bytes.len()).map_err(|_| -2)
}

/// Copy a held buffer of `len` bytes out of the host with `fetch(ptr, cap)`.
fn fetch(len: i32, fetch: impl Fn(*mut u8, i32) -> i32) -> Result<Vec<u8>, Fault> {
    if len < 0 {
        return Err(len);
    }
    let mut buf: Vec<u8> = Vec::with_capacity(len as usize);
    let got = fetch(buf.as_mut_ptr(), len);
    if got != len {
        return Err(if got < 0 { got } else { -1 });
    }
    // SAFETY: the host wrote exactly `len` initialised bytes into the first `len` bytes of the capacity.
    unsafe { buf.set_len(len as usize) };
    Ok(buf)
}

/// Call `method` (with a 16-byte library id or none) and return the response envelope's bytes.
#[cfg(target_arch = "wasm32")]
pub fn call(method: &str, library: Option<&[u8; 16]>, payload: &[u8]) -> Result<Vec<u8>, Fault> {
    let library_ptr = library.map_or(core::ptr::null(), |id| id.as_ptr());
    let mut buf: Vec<u8> = Vec::with_capacity(FIRST_BUFFER);
    // SAFETY: every pointer/length pair describes a live borrowed slice the host only reads, and `buf` has
    // FIRST_BUFFER writable bytes of capacity, which is all the host may write to.
    let n = unsafe { spacedrive_call_into(method.as_ptr(), len32(method.as_bytes())?, library_ptr, payload.as_ptr(),
                                          len32(payload)?, buf.as_mut_ptr(), FIRST_BUFFER as i32) };
    if n < 0 {
        return Err(n);
    }
    if n as usize <= FIRST_BUFFER {
        // SAFETY: the envelope fitted, so the host wrote exactly `n` initialised bytes at the start of `buf`.
        unsafe { buf.set_len(n as usize) };
        return Ok(buf);
    }
    // SAFETY: `fetch` hands a writable buffer of `cap` bytes.
    fetch(n, |ptr, cap| unsafe { spacedrive_result(ptr, cap) })
}

/// The job's input JSON.
#[cfg(target_arch = "wasm32")]
pub fn input() -> Result<Vec<u8>, Fault> {
    // SAFETY: a null pointer with capacity 0 only asks the size; the host writes nothing.
    let n = unsafe { spacedrive_input(core::ptr::null_mut(), 0) };
    // SAFETY: `fetch` hands a writable buffer of `cap` bytes.
    fetch(n, |ptr, cap| unsafe { spacedrive_input(ptr, cap) })
}

/// One log line (the host cuts it at 4 KiB).
#[cfg(target_arch = "wasm32")]
pub fn log(level: i32, message: &str) {
    let len = message.len().min(i32::MAX as usize) as i32;
    // SAFETY: the pointer/length pair describes the borrowed string.
    unsafe { spacedrive_log(level, message.as_ptr(), len) }
}

// Off wasm (cargo check/doc on the build machine) there is no host: calls fail as ABI faults, logs go to stderr.
#[cfg(not(target_arch = "wasm32"))]
pub fn call(_method: &str, _library: Option<&[u8; 16]>, payload: &[u8]) -> Result<Vec<u8>, Fault> {
    len32(payload)?;
    fetch(-1, |_, _| -1)
}

#[cfg(not(target_arch = "wasm32"))]
pub fn input() -> Result<Vec<u8>, Fault> {
    Err(-1)
}

#[cfg(not(target_arch = "wasm32"))]
pub fn log(level: i32, message: &str) {
    eprintln!("[{}] {}", level, message);
}
