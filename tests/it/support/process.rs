//! Processes a test starts, stopped with everything they started.
//!
//! Each runs in its own process group. Dropping the guard (a test's end, or
//! a failed assertion unwinding) kills the whole group, so an MLflow server's
//! uvicorn worker or a hook's `sleep` goes with it. A test binary that dies
//! without unwinding (abort, SIGKILL) runs no destructor, so a small watchdog
//! shell, outside the group, kills the group once the test binary is gone.

use std::ops::{Deref, DerefMut};
use std::os::unix::process::CommandExt;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

pub struct Owned {
    child: Child,
    watchdog: Option<Child>,
}

/// Spawns `cmd` in a new process group watched over as described above.
pub fn spawn_owned(cmd: &mut Command) -> std::io::Result<Owned> {
    let child = cmd.process_group(0).spawn()?;
    let watchdog = Command::new("sh")
        .arg("-c")
        .arg("while kill -0 \"$0\" 2>/dev/null; do sleep 0.5; done; kill -KILL -- \"-$1\" 2>/dev/null")
        .arg(std::process::id().to_string())
        .arg(child.id().to_string())
        .process_group(0)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .ok();
    Ok(Owned { child, watchdog })
}

impl Owned {
    /// SIGKILL to the whole group.
    pub fn kill_group(&mut self) {
        if let Ok(pid) = i32::try_from(self.child.id()) {
            // SAFETY: kill(2) on the process group this guard created.
            unsafe { libc::kill(-pid, libc::SIGKILL) };
        }
    }

    /// Sends `signal` to the leader and waits for it, at most `deadline`;
    /// past it the group is killed and the test fails.
    pub fn signal_and_wait(&mut self, signal: i32, deadline: Duration) -> std::process::ExitStatus {
        // SAFETY: kill(2) on a child this guard owns.
        unsafe { libc::kill(self.child.id() as i32, signal) };
        let until = Instant::now() + deadline;
        loop {
            if let Some(status) = self.child.try_wait().expect("wait for child") {
                return status;
            }
            if Instant::now() >= until {
                self.kill_group();
                let _ = self.child.wait();
                panic!(
                    "pid {} did not exit within {deadline:?} of signal {signal}",
                    self.child.id()
                );
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Deref for Owned {
    type Target = Child;
    fn deref(&self) -> &Child {
        &self.child
    }
}

impl DerefMut for Owned {
    fn deref_mut(&mut self) -> &mut Child {
        &mut self.child
    }
}

impl Drop for Owned {
    fn drop(&mut self) {
        self.kill_group();
        let _ = self.child.wait();
        if let Some(mut watchdog) = self.watchdog.take() {
            let _ = watchdog.kill();
            let _ = watchdog.wait();
        }
    }
}
