//! The terminal for `observer top`: raw keys without echo, the alternate screen, the size.
//! Restored on drop, also when the program leaves through an error.
use std::io::{IsTerminal, Write};

pub struct Raw {
    saved: libc::termios,
}

impl Raw {
    /// Raw mode on stdin, alternate screen on stdout. `None` when either is not a terminal.
    pub fn enter() -> Option<Self> {
        if !std::io::stdin().is_terminal() || !std::io::stdout().is_terminal() {
            return None;
        }
        // SAFETY: tcgetattr/tcsetattr on fd 0 with a valid termios struct.
        unsafe {
            let mut t: libc::termios = std::mem::zeroed();
            if libc::tcgetattr(0, &mut t) != 0 {
                return None;
            }
            let saved = t;
            t.c_lflag &= !(libc::ICANON | libc::ECHO);
            t.c_cc[libc::VMIN] = 0;
            t.c_cc[libc::VTIME] = 0;
            libc::tcsetattr(0, libc::TCSANOW, &t);
            print!("\x1b[?1049h\x1b[?25l");
            let _ = std::io::stdout().flush();
            Some(Self { saved })
        }
    }

    /// Waits up to `ms` for a key; returns it.
    pub fn key(&self, ms: i32) -> Option<u8> {
        let mut fds = libc::pollfd { fd: 0, events: libc::POLLIN, revents: 0 };
        // SAFETY: one valid pollfd; read into a one-byte buffer.
        unsafe {
            if libc::poll(&mut fds, 1, ms) > 0 {
                let mut b = 0u8;
                if libc::read(0, (&mut b as *mut u8).cast(), 1) == 1 {
                    return Some(b);
                }
            }
        }
        None
    }
}

impl Drop for Raw {
    fn drop(&mut self) {
        print!("\x1b[?25h\x1b[?1049l");
        let _ = std::io::stdout().flush();
        // SAFETY: restores the attributes saved in `enter`.
        unsafe { libc::tcsetattr(0, libc::TCSANOW, &self.saved) };
    }
}

/// Rows and columns of the terminal on stdout (24x80 when unknown).
pub fn size() -> (usize, usize) {
    // SAFETY: TIOCGWINSZ fills a winsize struct.
    unsafe {
        let mut w: libc::winsize = std::mem::zeroed();
        if libc::ioctl(1, libc::TIOCGWINSZ, &mut w) == 0 && w.ws_row > 0 {
            return (w.ws_row as usize, w.ws_col as usize);
        }
    }
    (24, 80)
}
