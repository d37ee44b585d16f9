//! The terminal for `observer top`: raw keys without echo, the alternate screen, its size and
//! changes of it, and frames drawn without flicker. Restored on drop, also when the program
//! leaves through an error or a panic.
//!
//! Raw mode here clears ISIG as well: Ctrl-C reaches `top` as a key instead of killing the
//! process, so it leaves through `Drop` like `q` does and the terminal is never left raw. Signals
//! from outside (SIGTERM from `kill`, SIGHUP when the terminal closes, SIGINT sent as a signal)
//! restore it too, then end the process as the signal would have (status 128 + its number). A frame
//! rewrites only the lines that changed, all in one write: the terminal never shows a cleared
//! screen between two frames.
#![forbid(unsafe_code)]
use std::{
    io::{self, IsTerminal, Write},
    time::Duration,
};

use crossterm::{
    cursor,
    event::{self, Event, KeyCode, KeyEventKind, KeyModifiers},
    queue, terminal,
};

/// What `top` may be told while it waits.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Input {
    Key(char),
    /// Ctrl-C (or Ctrl-D): leave as `q` does.
    Interrupt,
    /// The terminal changed size: draw again now, for the new size.
    Resize,
}

pub struct Screen {
    frames: Frames,
}

/// What the terminal shows, and the bytes that turn it into the next frame.
struct Frames {
    /// The lines on the terminal now, to rewrite only those that change.
    shown: Vec<String>,
    rows: usize,
    cols: usize,
}

impl Frames {
    /// The bytes that show `lines` (cut to the screen's size) where `self.shown` is: only the
    /// lines that differ are rewritten, and lines no longer used are cleared.
    fn next(&mut self, lines: &[String]) -> io::Result<Vec<u8>> {
        let lines: Vec<String> = lines.iter().take(self.rows).map(|l| l.chars().take(self.cols).collect()).collect();
        let mut frame = Vec::new();
        if self.shown.is_empty() {
            queue!(frame, terminal::Clear(terminal::ClearType::All))?;
        }
        for (row, line) in lines.iter().enumerate() {
            if self.shown.get(row) != Some(line) {
                queue!(frame, cursor::MoveTo(0, row as u16), crossterm::style::Print(line), terminal::Clear(terminal::ClearType::UntilNewLine))?;
            }
        }
        for row in lines.len()..self.shown.len() {
            queue!(frame, cursor::MoveTo(0, row as u16), terminal::Clear(terminal::ClearType::CurrentLine))?;
        }
        self.shown = lines;
        Ok(frame)
    }
}

impl Screen {
    /// Raw mode and the alternate screen. `None` when stdin or stdout is not a terminal (then
    /// `top` prints plain snapshots).
    pub fn enter() -> Option<Self> {
        if !io::stdin().is_terminal() || !io::stdout().is_terminal() {
            return None;
        }
        // Before raw mode: no moment when a signal would leave it behind. Without the watcher
        // (it fails only when the system is out of threads or descriptors), keys still restore
        // the terminal.
        if let Err(e) = restore_on_signals() {
            log::warn!("the terminal will not be restored if top is killed: {e}");
        }
        // A signal now is handled once the terminal is set up: restored after, not before.
        let _setting_up = io::stdout().lock();
        terminal::enable_raw_mode().ok()?;
        let (cols, rows) = terminal::size().unwrap_or((80, 24));
        let screen = Self { frames: Frames { shown: Vec::new(), rows: rows.into(), cols: cols.into() } };
        let mut out = io::stdout();
        // Dropped on failure: raw mode goes with it.
        queue!(out, terminal::EnterAlternateScreen, cursor::Hide, terminal::Clear(terminal::ClearType::All)).ok()?;
        out.flush().ok()?;
        Some(screen)
    }

    /// Rows and columns.
    pub fn size(&self) -> (usize, usize) {
        (self.frames.rows, self.frames.cols)
    }

    /// Waits up to `timeout` for a key or a resize.
    pub fn wait(&mut self, timeout: Duration) -> Option<Input> {
        if !event::poll(timeout).unwrap_or(false) {
            return None;
        }
        match event::read().ok()? {
            Event::Key(k) if k.kind != KeyEventKind::Release => match k.code {
                KeyCode::Char('c' | 'd') if k.modifiers.contains(KeyModifiers::CONTROL) => Some(Input::Interrupt),
                KeyCode::Char(c) => Some(Input::Key(c)),
                KeyCode::Esc => Some(Input::Key('q')),
                _ => None,
            },
            Event::Resize(cols, rows) => {
                (self.frames.rows, self.frames.cols) = (rows.into(), cols.into());
                // Every line may have moved or wrapped: draw the next frame whole.
                self.frames.shown.clear();
                Some(Input::Resize)
            }
            _ => None,
        }
    }

    /// Shows `lines` (cut to the screen's size), rewriting only the lines that differ from what is
    /// shown, in one write.
    pub fn draw(&mut self, lines: &[String]) -> io::Result<()> {
        let frame = self.frames.next(lines)?;
        let mut out = io::stdout().lock();
        out.write_all(&frame)?;
        out.flush()
    }
}

impl Drop for Screen {
    fn drop(&mut self) {
        restore();
    }
}

/// Undoes what [`Screen::enter`] did: the cursor shown, the screen the shell wrote on, lines and
/// echo and signal keys as the terminal had them. Errors are ignored: after a SIGHUP there is no
/// terminal left to restore.
fn restore() {
    let mut out = io::stdout();
    let _ = queue!(out, cursor::Show, terminal::LeaveAlternateScreen);
    let _ = out.flush();
    let _ = terminal::disable_raw_mode();
}

/// Catches SIGTERM, SIGHUP and SIGINT for as long as the process lives: on the first, restores
/// the terminal and exits with 128 + the signal's number, the status a shell reports for a
/// process the signal ended. A thread of its own waits for them (tokio's signal handling: the
/// handler itself only wakes it), so the terminal is restored whatever `top` is blocked on.
fn restore_on_signals() -> io::Result<()> {
    use tokio::signal::unix::{signal, SignalKind};
    let rt = tokio::runtime::Builder::new_current_thread().enable_io().build()?;
    let (mut term, mut hup, mut int) = {
        // Registered here, before the caller goes raw; only waited for on the thread.
        let _runtime = rt.enter();
        (signal(SignalKind::terminate())?, signal(SignalKind::hangup())?, signal(SignalKind::interrupt())?)
    };
    std::thread::Builder::new().name("top-signals".into()).spawn(move || {
        let signo = rt
            .block_on(async {
                tokio::select! {
                    _ = term.recv() => SignalKind::terminate(),
                    _ = hup.recv() => SignalKind::hangup(),
                    _ = int.recv() => SignalKind::interrupt(),
                }
            })
            .as_raw_value();
        // Held until the process is gone: `top` cannot draw a frame over the restored screen.
        let _out = io::stdout().lock();
        restore();
        std::process::exit(128 + signo);
    })?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn lines(l: &[&str]) -> Vec<String> {
        l.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn a_frame_rewrites_only_the_lines_that_changed() {
        let mut f = Frames { shown: Vec::new(), rows: 3, cols: 10 };
        let first = String::from_utf8(f.next(&lines(&["header", "row one", "row two", "beyond the last row"])).unwrap()).unwrap();
        // Whole: cleared once, each line at its row, cut at the edge and the last row.
        assert_eq!(first, "\x1b[2J\x1b[1;1Hheader\x1b[K\x1b[2;1Hrow one\x1b[K\x1b[3;1Hrow two\x1b[K");
        assert_eq!(f.next(&lines(&["header", "row one", "row two"])).unwrap(), b"", "nothing changed, nothing written");
        let second = String::from_utf8(f.next(&lines(&["header", "row 1 is longer than ten"])).unwrap()).unwrap();
        assert_eq!(second, "\x1b[2;1Hrow 1 is l\x1b[K\x1b[3;1H\x1b[2K", "the changed line, and the one no longer used cleared");
    }
}
