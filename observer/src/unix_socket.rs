//! `observer run --unix-socket PATH`: the API on a Unix stream socket that only the daemon's user
//! can open. Any local user can connect to a loopback TCP port, and the API names every client's
//! four-tuple; a socket file is guarded by its mode, 0600 from the moment it exists.
#![forbid(unsafe_code)]
use std::{
    fs, io,
    os::unix::{
        fs::{FileTypeExt, MetadataExt},
        net::{UnixListener, UnixStream},
    },
    path::{Path, PathBuf},
};

#[derive(Debug, thiserror::Error)]
pub enum UnixSocketError {
    #[error("something already answers on {0} (another observer?): stop it, or choose another --unix-socket")]
    InUse(PathBuf),
    #[error("{0} exists and is not a socket: choose another --unix-socket (observer replaces only a socket nothing answers on)")]
    NotASocket(PathBuf),
    #[error("removing the stale socket {path} (nothing answers on it): {source}")]
    RemoveStale { path: PathBuf, source: io::Error },
    #[error("cannot create the API's Unix socket {path}: {source} (its directory must exist and be writable)")]
    Bind { path: PathBuf, source: io::Error },
}

/// The socket file, removed on drop if it is still the one this daemon created (after a crash, a
/// newer daemon may have replaced it).
#[derive(Debug)]
pub struct SocketFile {
    pub path: PathBuf,
    dev: u64,
    ino: u64,
}

impl Drop for SocketFile {
    fn drop(&mut self) {
        let Ok(m) = fs::symlink_metadata(&self.path) else { return };
        if (m.dev(), m.ino()) != (self.dev, self.ino) {
            return;
        }
        if let Err(e) = fs::remove_file(&self.path) {
            log::warn!("removing the API socket {}: {e}", self.path.display());
        }
    }
}

/// Listens on `path`, mode 0600. A socket file left there by a daemon that did not exit cleanly
/// is replaced; one that something answers on, or a file that is not a socket, is refused.
pub fn bind(path: &Path) -> Result<(UnixListener, SocketFile), UnixSocketError> {
    match fs::symlink_metadata(path) {
        Ok(m) if m.file_type().is_socket() => match UnixStream::connect(path) {
            Ok(_) => return Err(UnixSocketError::InUse(path.to_owned())),
            Err(e) if e.kind() == io::ErrorKind::ConnectionRefused => {
                fs::remove_file(path).map_err(|source| UnixSocketError::RemoveStale { path: path.to_owned(), source })?;
                log::info!("removed the stale socket {} (nothing answered on it)", path.display());
            }
            // Gone meanwhile, or not ours to open: bind says what is wrong.
            Err(_) => {}
        },
        Ok(_) => return Err(UnixSocketError::NotASocket(path.to_owned())),
        Err(_) => {}
    }
    // The kernel creates the file with 0777 less the umask: with 0177 it is 0600 from the start,
    // not widened first and narrowed by a chmod while a client could already connect.
    let bound = crate::sys::with_umask(0o177, || UnixListener::bind(path));
    let listener = bound.map_err(|source| UnixSocketError::Bind { path: path.to_owned(), source })?;
    let m = fs::symlink_metadata(path).map_err(|source| UnixSocketError::Bind { path: path.to_owned(), source })?;
    Ok((listener, SocketFile { path: path.to_owned(), dev: m.dev(), ino: m.ino() }))
}

#[cfg(test)]
mod tests {
    use std::os::unix::fs::PermissionsExt;

    use super::*;

    /// A fresh directory for one test, removed at its end.
    struct Scratch(PathBuf);

    impl Scratch {
        fn new(test: &str) -> Self {
            let dir = std::env::temp_dir().join(format!("observer-unit-{}-{test}", std::process::id()));
            let _ = fs::remove_dir_all(&dir);
            fs::create_dir_all(&dir).expect("a scratch directory");
            Self(dir)
        }
    }

    impl Drop for Scratch {
        fn drop(&mut self) {
            let _ = fs::remove_dir_all(&self.0);
        }
    }

    #[test]
    fn the_socket_is_the_owners_alone_and_goes_with_the_daemon() {
        let dir = Scratch::new("mode");
        let path = dir.0.join("api.sock");
        let (listener, file) = bind(&path).expect("binding");
        let m = fs::symlink_metadata(&path).unwrap();
        assert!(m.file_type().is_socket());
        assert_eq!(m.permissions().mode() & 0o777, 0o600);
        UnixStream::connect(&path).expect("it answers");
        drop(listener);
        drop(file);
        assert!(!path.exists(), "removed on exit");
    }

    #[test]
    fn a_stale_socket_is_replaced_and_a_live_one_refused() {
        let dir = Scratch::new("stale");
        let path = dir.0.join("api.sock");
        // A daemon that died without removing its socket.
        drop(UnixListener::bind(&path).unwrap());
        assert!(path.exists());
        let (live, _file) = bind(&path).expect("the stale socket is replaced");
        assert!(matches!(bind(&path), Err(UnixSocketError::InUse(_))), "a second daemon is refused");
        UnixStream::connect(&path).expect("the first one still answers");
        drop(live);
    }

    #[test]
    fn a_file_that_is_not_a_socket_is_left_alone() {
        let dir = Scratch::new("file");
        let path = dir.0.join("notes");
        fs::write(&path, "keep me").unwrap();
        let e = bind(&path).unwrap_err();
        assert!(matches!(e, UnixSocketError::NotASocket(_)), "{e}");
        assert_eq!(fs::read_to_string(&path).unwrap(), "keep me");
        assert!(bind(&dir.0.join("missing/api.sock")).unwrap_err().to_string().contains("directory must exist"));
    }

    #[test]
    fn a_replaced_socket_file_is_not_removed_by_the_old_daemon() {
        let dir = Scratch::new("replaced");
        let path = dir.0.join("api.sock");
        let (old, old_file) = bind(&path).unwrap();
        // Another daemon took the path over (the old one looked dead to it).
        fs::remove_file(&path).unwrap();
        let (_new, _new_file) = bind(&path).unwrap();
        drop(old);
        drop(old_file);
        assert!(path.exists(), "the new daemon's socket stays");
    }
}
