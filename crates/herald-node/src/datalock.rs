//! One server per embedded data dir. Two `herald serve` on one SQLite
//! database would each run the duties (deliveries, lifecycle, jobs) and
//! fight over the same files without a word; an exclusive `flock` on
//! `DATA_DIR/herald.lock` makes the second refuse to start, naming the
//! first. The kernel drops the lock when the holder exits, even on kill -9,
//! so a stale file never blocks a restart. PostgreSQL nodes share one
//! database by design and take no lock.

use anyhow::bail;
use nix::fcntl::{Flock, FlockArg};
use std::fs::File;
use std::io::{Read, Seek, Write};
use std::net::SocketAddr;
use std::path::Path;

/// The held lock; released when dropped (or when the process ends).
pub(crate) struct DataDirLock {
    _file: Flock<File>,
}

pub(crate) fn acquire(data_dir: &Path, addr: SocketAddr) -> anyhow::Result<DataDirLock> {
    let path = data_dir.join("herald.lock");
    // Not truncated on open: the holder's PID and address must survive a
    // second server's attempt.
    use std::os::unix::fs::OpenOptionsExt;
    let file = std::fs::OpenOptions::new()
        .mode(0o600)
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .open(&path)
        .map_err(|e| anyhow::anyhow!("cannot open {}: {e}", path.display()))?;
    let mut file = match Flock::lock(file, FlockArg::LockExclusiveNonblock) {
        Ok(f) => f,
        Err((mut file, nix::errno::Errno::EWOULDBLOCK)) => {
            let mut holder = String::new();
            let _ = file.read_to_string(&mut holder);
            let holder = holder.trim();
            let holder = if holder.is_empty() {
                "another process".to_owned()
            } else {
                holder.replace('\n', ", ")
            };
            bail!(
                "data dir {} is in use by another herald server ({holder}); stop it, or give this one its own --data-dir",
                data_dir.display()
            );
        }
        Err((_, e)) => bail!("cannot lock {}: {e}", path.display()),
    };
    file.set_len(0)?;
    file.rewind()?;
    write!(file, "pid {}\nlistening on {addr}\n", std::process::id())?;
    file.flush()?;
    Ok(DataDirLock { _file: file })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_second_lock_names_the_holder() {
        let dir = std::env::temp_dir().join(format!("herald-lock-{}", uuid::Uuid::new_v4()));
        std::fs::create_dir_all(&dir).unwrap();
        let addr: SocketAddr = "127.0.0.1:8443".parse().unwrap();
        let held = acquire(&dir, addr).unwrap();
        let err = acquire(&dir, addr)
            .err()
            .expect("second lock refused")
            .to_string();
        assert!(
            err.contains(&format!("pid {}", std::process::id())),
            "{err}"
        );
        assert!(err.contains("127.0.0.1:8443"), "{err}");
        drop(held);
        acquire(&dir, addr).expect("free again once released");
        let _ = std::fs::remove_dir_all(&dir);
    }
}
