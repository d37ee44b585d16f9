//! A pseudo-terminal: `observer top` as a person sees it, in a tmux session of the test's own.
use std::{
    process::{Command, Stdio},
    time::Duration,
};

use super::unique;
use crate::poll;

/// A detached tmux session on its own tmux server (`-L` socket unique to the test), so tests
/// never see each other's sessions. The server is killed on drop.
pub struct Tmux {
    pub socket: String,
    pub session: String,
}

impl Tmux {
    /// Starts `command` (run by a shell) in a new `width`x`height` session. The pane stays after
    /// the command exits, so that its exit status can be read.
    pub fn start(command: &str, width: u16, height: u16) -> Tmux {
        let name = unique("obs-tmux");
        let tmux = Tmux { socket: name.clone(), session: name };
        let (w, h) = (width.to_string(), height.to_string());
        let out = tmux.run(&[
            "new-session",
            "-d",
            "-s",
            &tmux.session,
            "-x",
            &w,
            "-y",
            &h,
            command,
            ";",
            "set-option",
            "-w",
            "-t",
            &tmux.session,
            "remain-on-exit",
            "on",
        ]);
        if !out.0 {
            panic!("tmux new-session failed: {}", out.1);
        }
        tmux
    }

    fn run(&self, args: &[&str]) -> (bool, String) {
        let out = Command::new("tmux")
            .args(["-f", "/dev/null", "-L", &self.socket])
            .args(args)
            .stdin(Stdio::null())
            .output()
            .unwrap_or_else(|e| panic!("cannot run tmux (Debian package `tmux`, see `cargo xtask setup`): {e}"));
        (out.status.success(), format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr)))
    }

    /// The visible screen, as text.
    pub fn capture(&self) -> String {
        let (ok, text) = self.run(&["capture-pane", "-p", "-t", &self.session]);
        if ok {
            text
        } else {
            format!("(capture-pane failed: {text})")
        }
    }

    /// Polls the screen until `done` holds; panics with the last screen after `timeout`.
    pub fn wait_for_screen(&self, what: &str, timeout: Duration, done: impl Fn(&str) -> bool) -> String {
        let mut last = String::new();
        poll(timeout, Duration::from_millis(50), || {
            last = self.capture();
            done(&last).then(|| last.clone())
        })
        .unwrap_or_else(|| panic!("waited {timeout:?} for the screen to show {what}; it shows:\n{last}"))
    }

    /// The pane's state as tmux reports it, for messages: dead, exit status, signal, pid, command.
    pub fn pane_state(&self) -> String {
        self.run(&[
            "display-message",
            "-p",
            "-t",
            &self.session,
            "dead=#{pane_dead} status=#{pane_dead_status} signal=#{pane_dead_signal} pid=#{pane_pid} command=#{pane_current_command}",
        ])
        .1
    }

    /// Types `keys` (literally) into the pane.
    pub fn send_keys(&self, keys: &str) {
        let (ok, text) = self.run(&["send-keys", "-t", &self.session, "-l", keys]);
        assert!(ok, "tmux send-keys: {text}");
    }

    /// Presses one key by its tmux name (`C-c`: Ctrl-C), as a terminal sends it.
    pub fn send_key(&self, key: &str) {
        let (ok, text) = self.run(&["send-keys", "-t", &self.session, key]);
        assert!(ok, "tmux send-keys {key}: {text}");
    }

    /// Resizes the window, as a terminal emulator does when its window is resized: the program in
    /// the pane gets SIGWINCH.
    pub fn resize(&self, width: u16, height: u16) {
        let (ok, text) = self.run(&["resize-window", "-t", &self.session, "-x", &width.to_string(), "-y", &height.to_string()]);
        assert!(ok, "tmux resize-window: {text}");
    }

    /// `Some(Ok(exit status))` once the pane's command has exited, `Some(Err(signal))` if a
    /// signal ended it, `None` while it runs.
    pub fn exit_status(&self) -> Option<Result<i32, String>> {
        let (ok, text) = self.run(&["display-message", "-p", "-t", &self.session, "#{pane_dead}|#{pane_dead_status}|#{pane_dead_signal}"]);
        assert!(ok, "tmux display-message: {text}");
        let f: Vec<&str> = text.trim().split('|').collect();
        match f[..] {
            // The pane is dead when its terminal closes; the status follows once tmux has reaped
            // the process: until then both are empty.
            ["1", "", ""] => None,
            ["1", status, signal] => Some(status.parse().map_err(|_| format!("status {status:?}, signal {signal:?}"))),
            _ => None,
        }
    }
}

impl Drop for Tmux {
    fn drop(&mut self) {
        let _ = self.run(&["kill-server"]);
    }
}
