//! A safe reader of the systemd journal through libsystemd's sd-journal, which is loaded with
//! `dlopen` when the first journal is opened instead of being linked: a process that reads no
//! journal maps neither libsystemd nor what it pulls in (libgcrypt, libgpg-error, liblz4,
//! libzstd, liblzma, libcap), and a host without libsystemd gets an error naming it when a
//! journal is opened, not a binary that cannot start.
//!
//! Only what banctl reads is bound: opening (the system's journal or a directory), matches,
//! seeking, stepping, an entry's fields, time and cursor, waiting for more, and the values a
//! field takes. A [`Journal`] is not `Send`: an sd-journal handle belongs to the thread that
//! opened it.
//!
//! Every `unsafe` block is a call into libsystemd (or the dynamic loader) whose contract the
//! `SAFETY` comment beside it states, from `sd-journal.h` and its manual pages.

use std::ffi::{CStr, CString, c_char, c_int, c_void};
use std::io;
use std::path::Path;
use std::ptr::{self, NonNull};
use std::sync::OnceLock;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// The soname of the libsystemd ABI bound here (stable since systemd 209).
const LIBRARY: &CStr = c"libsystemd.so.0";

/// `SD_JOURNAL_SYSTEM`: the system's journal files, not the users'.
const SYSTEM: c_int = 1 << 2;
/// `SD_JOURNAL_OS_ROOT`: the directory is the root of an operating system tree.
const OS_ROOT: c_int = 1 << 4;

/// An `sd_journal`, only ever behind a pointer.
#[repr(C)]
struct Handle {
    _opaque: [u8; 0],
}

type Raw = *mut Handle;

/// Declares the entry points: each field is resolved from the symbol beside it, with the C
/// signature `sd-journal.h` gives it.
macro_rules! entry_points {
    ($($field:ident = $symbol:literal: fn($($arg:ty),*) $(-> $ret:ty)?;)*) => {
        struct Api {
            $($field: unsafe extern "C" fn($($arg),*) $(-> $ret)?,)*
        }

        impl Api {
            fn load() -> Result<Api, String> {
                let library = open_library()?;
                Ok(Api {
                    $($field: {
                        // SAFETY: `library` is a live handle, the name a C string literal.
                        let found = unsafe { libc::dlsym(library, $symbol.as_ptr()) };
                        if found.is_null() {
                            return Err(loader_error());
                        }
                        // SAFETY: `found` is libsystemd's function of that name, whose C
                        // signature is the field's type.
                        unsafe {
                            std::mem::transmute::<*mut c_void, unsafe extern "C" fn($($arg),*) $(-> $ret)?>(found)
                        }
                    },)*
                })
            }
        }
    };
}

entry_points! {
    open = c"sd_journal_open": fn(*mut Raw, c_int) -> c_int;
    open_directory = c"sd_journal_open_directory": fn(*mut Raw, *const c_char, c_int) -> c_int;
    close = c"sd_journal_close": fn(Raw);
    add_match = c"sd_journal_add_match": fn(Raw, *const c_void, usize) -> c_int;
    add_disjunction = c"sd_journal_add_disjunction": fn(Raw) -> c_int;
    seek_head = c"sd_journal_seek_head": fn(Raw) -> c_int;
    seek_realtime_usec = c"sd_journal_seek_realtime_usec": fn(Raw, u64) -> c_int;
    seek_cursor = c"sd_journal_seek_cursor": fn(Raw, *const c_char) -> c_int;
    test_cursor = c"sd_journal_test_cursor": fn(Raw, *const c_char) -> c_int;
    next = c"sd_journal_next": fn(Raw) -> c_int;
    previous = c"sd_journal_previous": fn(Raw) -> c_int;
    get_realtime_usec = c"sd_journal_get_realtime_usec": fn(Raw, *mut u64) -> c_int;
    get_data = c"sd_journal_get_data": fn(Raw, *const c_char, *mut *const c_void, *mut usize) -> c_int;
    get_cursor = c"sd_journal_get_cursor": fn(Raw, *mut *mut c_char) -> c_int;
    wait = c"sd_journal_wait": fn(Raw, u64) -> c_int;
    query_unique = c"sd_journal_query_unique": fn(Raw, *const c_char) -> c_int;
    enumerate_unique = c"sd_journal_enumerate_unique": fn(Raw, *mut *const c_void, *mut usize) -> c_int;
}

/// libsystemd, loaded. The handle is never closed, so the functions resolved from it stay
/// valid for the life of the process.
fn open_library() -> Result<*mut c_void, String> {
    // SAFETY: a constant, NUL-terminated soname.
    let library = unsafe { libc::dlopen(LIBRARY.as_ptr(), libc::RTLD_NOW | libc::RTLD_LOCAL) };
    match library.is_null() {
        true => Err(loader_error()),
        false => Ok(library),
    }
}

/// The loader's last error, copied.
fn loader_error() -> String {
    // SAFETY: `dlerror` returns null or a C string valid until the next loader call on this
    // thread; it is copied before any.
    let message = unsafe { libc::dlerror() };
    if message.is_null() {
        return "unknown dynamic loader error".to_owned();
    }
    // SAFETY: non-null, NUL-terminated (above).
    unsafe { CStr::from_ptr(message) }
        .to_string_lossy()
        .into_owned()
}

/// libsystemd's entry points, loaded on first use (once per process).
fn api() -> io::Result<&'static Api> {
    static API: OnceLock<Result<Api, String>> = OnceLock::new();
    API.get_or_init(Api::load).as_ref().map_err(|e| {
        io::Error::new(
            io::ErrorKind::NotFound,
            format!("reading the journal needs libsystemd: {e}"),
        )
    })
}

/// A negative return is `-errno`.
fn check(returned: c_int) -> io::Result<c_int> {
    match returned {
        r if r < 0 => Err(io::Error::from_raw_os_error(-r)),
        r => Ok(r),
    }
}

fn c_string(text: &[u8], what: &str) -> io::Result<CString> {
    CString::new(text).map_err(|_| {
        io::Error::new(
            io::ErrorKind::InvalidInput,
            format!("{what} holds a NUL byte"),
        )
    })
}

/// An open journal: the system's, or the files of one directory.
pub struct Journal {
    handle: NonNull<Handle>,
    api: &'static Api,
}

impl Journal {
    /// The system's journal (`journalctl --system`).
    pub fn open_system() -> io::Result<Journal> {
        let api = api()?;
        let mut handle = ptr::null_mut();
        // SAFETY: `handle` is a valid place for the new journal's pointer.
        let returned = unsafe { (api.open)(&mut handle, SYSTEM) };
        Journal::opened(api, returned, handle)
    }

    /// The journal files in `dir` (`journalctl --directory`), or with `os_root`, the journal of
    /// the operating system tree rooted at `dir` (`journalctl --root`).
    pub fn open_directory(dir: &Path, os_root: bool) -> io::Result<Journal> {
        let api = api()?;
        let path = c_string(dir.as_os_str().as_encoded_bytes(), "the journal directory")?;
        let flags = if os_root { OS_ROOT } else { 0 };
        let mut handle = ptr::null_mut();
        // SAFETY: `handle` is a valid place for the new journal's pointer, `path` a C string
        // that outlives the call.
        let returned = unsafe { (api.open_directory)(&mut handle, path.as_ptr(), flags) };
        Journal::opened(api, returned, handle)
    }

    fn opened(api: &'static Api, returned: c_int, handle: Raw) -> io::Result<Journal> {
        check(returned)?;
        let handle =
            NonNull::new(handle).ok_or_else(|| io::Error::other("sd-journal opened no journal"))?;
        Ok(Journal { handle, api })
    }

    fn raw(&mut self) -> Raw {
        self.handle.as_ptr()
    }

    /// Keeps only entries whose `field` is `value` (journalctl's `FIELD=value`); matches of
    /// different fields must all hold, of the same field any one.
    pub fn add_match(&mut self, field: &str, value: &[u8]) -> io::Result<()> {
        let data = [field.as_bytes(), b"=", value].concat();
        let j = self.raw();
        // SAFETY: a live journal; `data` is readable for its length, and sd-journal copies it.
        check(unsafe { (self.api.add_match)(j, data.as_ptr().cast(), data.len()) }).map(drop)
    }

    /// Starts another group of matches, OR-ed with the ones before (journalctl's `+`).
    pub fn add_disjunction(&mut self) -> io::Result<()> {
        let j = self.raw();
        // SAFETY: a live journal.
        check(unsafe { (self.api.add_disjunction)(j) }).map(drop)
    }

    /// Before the oldest entry.
    pub fn seek_head(&mut self) -> io::Result<()> {
        let j = self.raw();
        // SAFETY: a live journal.
        check(unsafe { (self.api.seek_head)(j) }).map(drop)
    }

    /// Before the first entry written at or after `at`.
    pub fn seek_time(&mut self, at: SystemTime) -> io::Result<()> {
        let usec = at
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| u64::try_from(d.as_micros()).unwrap_or(u64::MAX));
        let j = self.raw();
        // SAFETY: a live journal.
        check(unsafe { (self.api.seek_realtime_usec)(j, usec) }).map(drop)
    }

    /// At the entry `cursor` names, or the nearest one when it is gone: the next step lands
    /// on it (see [`Journal::test_cursor`]).
    pub fn seek_cursor(&mut self, cursor: &str) -> io::Result<()> {
        let cursor = c_string(cursor.as_bytes(), "the journal cursor")?;
        let j = self.raw();
        // SAFETY: a live journal, a C string that outlives the call.
        check(unsafe { (self.api.seek_cursor)(j, cursor.as_ptr()) }).map(drop)
    }

    /// Whether the current entry is the one `cursor` names.
    pub fn test_cursor(&mut self, cursor: &str) -> io::Result<bool> {
        let cursor = c_string(cursor.as_bytes(), "the journal cursor")?;
        let j = self.raw();
        // SAFETY: a live journal, a C string that outlives the call.
        check(unsafe { (self.api.test_cursor)(j, cursor.as_ptr()) }).map(|r| r > 0)
    }

    /// Steps to the next entry; `false` at the end.
    pub fn next_entry(&mut self) -> io::Result<bool> {
        let j = self.raw();
        // SAFETY: a live journal.
        check(unsafe { (self.api.next)(j) }).map(|r| r > 0)
    }

    /// Steps to the previous entry; `false` at the start.
    pub fn previous_entry(&mut self) -> io::Result<bool> {
        let j = self.raw();
        // SAFETY: a live journal.
        check(unsafe { (self.api.previous)(j) }).map(|r| r > 0)
    }

    /// When the current entry was written (wall clock).
    pub fn time(&mut self) -> io::Result<SystemTime> {
        let mut usec = 0;
        let j = self.raw();
        // SAFETY: a live journal, `usec` a valid place for the result.
        check(unsafe { (self.api.get_realtime_usec)(j, &mut usec) })?;
        Ok(UNIX_EPOCH + Duration::from_micros(usec))
    }

    /// The value of `field` in the current entry, `None` when it has none. The bytes are the
    /// journal's own, valid until the journal is used again (which the borrow enforces).
    pub fn data(&mut self, field: &str) -> io::Result<Option<&[u8]>> {
        let name = c_string(field.as_bytes(), "a journal field name")?;
        let (mut data, mut len) = (ptr::null(), 0usize);
        let j = self.raw();
        // SAFETY: a live journal, a C string that outlives the call, valid places for the
        // results.
        let returned = unsafe { (self.api.get_data)(j, name.as_ptr(), &mut data, &mut len) };
        if returned == -libc::ENOENT {
            return Ok(None);
        }
        check(returned)?;
        if data.is_null() {
            return Ok(None);
        }
        // SAFETY: on success sd-journal points `data` at `len` readable bytes, `FIELD=value`,
        // which stay valid until the next call on this journal; the returned borrow of `self`
        // forbids one before it ends.
        let entry = unsafe { std::slice::from_raw_parts(data.cast::<u8>(), len) };
        Ok(entry.get(field.len() + 1..))
    }

    /// The cursor of the current entry, to come back just after it.
    pub fn cursor(&mut self) -> io::Result<String> {
        let mut text: *mut c_char = ptr::null_mut();
        let j = self.raw();
        // SAFETY: a live journal, `text` a valid place for the result.
        check(unsafe { (self.api.get_cursor)(j, &mut text) })?;
        if text.is_null() {
            return Err(io::Error::other("sd-journal gave no cursor"));
        }
        // SAFETY: on success `text` is a C string the caller owns.
        let cursor = unsafe { CStr::from_ptr(text) }
            .to_string_lossy()
            .into_owned();
        // SAFETY: allocated by libsystemd with malloc, freed once, not used after.
        unsafe { libc::free(text.cast()) };
        Ok(cursor)
    }

    /// Waits until the journal changes or `timeout` passes.
    pub fn wait(&mut self, timeout: Duration) -> io::Result<()> {
        let usec = u64::try_from(timeout.as_micros()).unwrap_or(u64::MAX - 1);
        let j = self.raw();
        // SAFETY: a live journal.
        check(unsafe { (self.api.wait)(j, usec) }).map(drop)
    }

    /// The values `field` takes in the journal's files (from the field index: no entry is
    /// read), matches notwithstanding.
    pub fn unique_values(&mut self, field: &str) -> io::Result<Vec<Vec<u8>>> {
        let name = c_string(field.as_bytes(), "a journal field name")?;
        let j = self.raw();
        // SAFETY: a live journal, a C string that outlives the call.
        check(unsafe { (self.api.query_unique)(j, name.as_ptr()) })?;
        let mut values = Vec::new();
        loop {
            let (mut data, mut len) = (ptr::null(), 0usize);
            // SAFETY: a live journal, valid places for the results.
            let more = check(unsafe { (self.api.enumerate_unique)(j, &mut data, &mut len) })?;
            if more == 0 || data.is_null() {
                return Ok(values);
            }
            // SAFETY: `len` readable bytes, `FIELD=value`, valid until the next call; copied.
            let entry = unsafe { std::slice::from_raw_parts(data.cast::<u8>(), len) };
            if let Some(value) = entry.get(field.len() + 1..) {
                values.push(value.to_vec());
            }
        }
    }
}

impl Drop for Journal {
    fn drop(&mut self) {
        let j = self.raw();
        // SAFETY: the journal this value owns, closed once, never used after.
        unsafe { (self.api.close)(j) }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn scratch(name: &str) -> std::path::PathBuf {
        let dir = std::env::temp_dir().join(format!("sd-journal-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        dir
    }

    #[test]
    fn an_empty_directory_is_a_journal_without_entries() {
        let dir = scratch("empty");
        let mut journal = Journal::open_directory(&dir, false).unwrap();
        journal.add_match("_SYSTEMD_UNIT", b"ssh.service").unwrap();
        journal.add_disjunction().unwrap();
        journal.add_match("SYSLOG_IDENTIFIER", b"sshd").unwrap();
        journal.seek_head().unwrap();
        assert!(!journal.next_entry().unwrap());
        assert!(!journal.previous_entry().unwrap());
        assert!(journal.cursor().is_err(), "no entry, no cursor");
        assert_eq!(
            journal.unique_values("_SYSTEMD_UNIT").unwrap(),
            Vec::<Vec<u8>>::new()
        );
        journal.wait(Duration::from_millis(1)).unwrap();
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn bad_input_is_an_error_not_a_crash() {
        let dir = scratch("bad");
        let mut journal = Journal::open_directory(&dir, false).unwrap();
        let nul = journal.add_match("MESSAGE", b"a\0b");
        assert!(nul.is_ok(), "values are bytes: {nul:?}");
        assert!(journal.seek_cursor("not a cursor").is_err());
        assert!(journal.seek_cursor("s=a\0b").is_err());
        assert!(journal.data("MESSAGE\0").is_err());
        assert!(journal.add_match("", b"").is_err());
        let missing = Journal::open_directory(&dir.join("missing"), false);
        assert!(missing.is_err(), "a missing directory fails to open");
        let _ = std::fs::remove_dir_all(&dir);
    }
}
