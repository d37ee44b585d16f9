//! A message head, byte by byte (RFC 9112 sections 2 and 5): header names matched against the
//! three framing reads (`Content-Length`, `Transfer-Encoding`, `Upgrade`), their values, and the
//! empty line that decides how the body is delimited (section 6.3).

use super::*;

impl DirFrame {
    #[inline(always)]
    pub(super) fn head_byte(&mut self, completed: &mut u8, b: u8) -> Option<Stop> {
        self.head_len = self.head_len.wrapping_add(1);
        if self.head_len > MAX_HEAD {
            return self.lose(LostReason::HeadTooLong);
        }
        match self.line {
            L_START_LINE => {
                if b == LF {
                    self.line = L_LINE_START;
                }
                None
            }
            L_LINE_START => {
                if b == LF {
                    return self.end_head(completed);
                }
                if b == CR {
                    self.line = L_CR;
                    return None;
                }
                // Obsolete line folding, or an empty name.
                if is_ws(b) || b == b':' {
                    return self.lose(LostReason::BadHead);
                }
                self.line = L_NAME;
                self.name_idx = 0;
                self.hdr = CAND_ALL;
                self.name_byte(b);
                None
            }
            L_CR => {
                if b == LF {
                    self.end_head(completed)
                } else {
                    self.lose(LostReason::BadHead)
                }
            }
            L_NAME => {
                if b == b':' {
                    self.begin_value();
                    None
                } else if is_ws(b) || b == CR || b == LF {
                    self.lose(LostReason::BadHead)
                } else {
                    self.name_byte(b);
                    None
                }
            }
            _ => {
                if b == LF {
                    self.end_value()
                } else {
                    // RFC 9112 section 2.2: a bare CR in a field value is read as SP (the CR
                    // before the LF is then trailing whitespace): `5\r5` is no length.
                    self.value_byte(if b == CR { b' ' } else { b })
                }
            }
        }
    }

    /// Case-insensitive matching of the three names framing cares about, one byte at a time.
    #[inline(always)]
    pub(super) fn name_byte(&mut self, b: u8) {
        let c = lower(b);
        let k = (self.name_idx as usize) & (NAME_MAX - 1);
        let mut cand = self.hdr;
        if CONTENT_LENGTH[k] != c {
            cand &= !CAND_CL;
        }
        if TRANSFER_ENCODING[k] != c {
            cand &= !CAND_TE;
        }
        if UPGRADE[k] != c {
            cand &= !CAND_UPGRADE;
        }
        if (self.name_idx as usize) < NAME_MAX - 1 {
            self.name_idx += 1;
        } else {
            cand = 0;
        }
        self.hdr = cand;
    }

    #[inline(always)]
    pub(super) fn begin_value(&mut self) {
        let n = self.name_idx;
        let c = self.hdr;
        self.hdr = if c & CAND_CL != 0 && n == 14 {
            HDR_CL
        } else if c & CAND_TE != 0 && n == 17 {
            HDR_TE
        } else if c & CAND_UPGRADE != 0 && n == 7 {
            self.hflags |= H_UPGRADE;
            HDR_UPGRADE
        } else {
            HDR_OTHER
        };
        self.line = L_VALUE;
        self.val = V_LEAD;
        self.te = 0;
        if self.hdr == HDR_CL {
            self.remaining = 0;
        }
    }

    #[inline(always)]
    pub(super) fn value_byte(&mut self, b: u8) -> Option<Stop> {
        if self.hdr == HDR_CL {
            return self.length_byte(b);
        }
        if self.hdr == HDR_TE {
            self.coding_byte(b);
        }
        None
    }

    /// Content-Length = 1*DIGIT, with optional whitespace around it.
    #[inline(always)]
    pub(super) fn length_byte(&mut self, b: u8) -> Option<Stop> {
        let d = b.wrapping_sub(b'0');
        if d <= 9 {
            let d = d as u64;
            if self.val == V_TRAIL || self.remaining > MAX_DIV10 || (self.remaining == MAX_DIV10 && d > MAX_MOD10) {
                return self.lose(LostReason::BadLength);
            }
            self.remaining = self.remaining.wrapping_mul(10).wrapping_add(d);
            self.val = V_DIGITS;
            None
        } else if is_ws(b) {
            if self.val == V_DIGITS {
                self.val = V_TRAIL;
            }
            None
        } else {
            self.lose(LostReason::BadLength)
        }
    }

    /// Is the last coding of a Transfer-Encoding list "chunked" (case-insensitive)?
    #[inline(always)]
    pub(super) fn coding_byte(&mut self, b: u8) {
        if b == b',' {
            self.te = 0;
        } else if is_ws(b) {
            if self.te != 0 {
                self.te |= TE_ENDED;
            }
        } else if self.te & (TE_BAD | TE_ENDED) != 0 {
            self.te |= TE_BAD;
        } else {
            let k = (self.te & 7) as usize;
            if k < 7 && lower(b) == CHUNKED[k & 7] {
                self.te += 1;
            } else {
                self.te |= TE_BAD;
            }
        }
    }

    #[inline(always)]
    pub(super) fn end_value(&mut self) -> Option<Stop> {
        self.line = L_LINE_START;
        if self.hdr == HDR_CL {
            if self.val == V_LEAD || (self.hflags & H_CL != 0 && self.length != self.remaining) {
                return self.lose(LostReason::BadLength);
            }
            self.length = self.remaining;
            self.hflags |= H_CL;
        } else if self.hdr == HDR_TE {
            // Each field line decides anew: the final coding is the last one of the last line.
            self.hflags |= H_TE;
            if self.te & 7 == 7 && self.te & TE_BAD == 0 {
                self.hflags |= H_CHUNKED;
            } else {
                self.hflags &= !H_CHUNKED;
            }
        }
        None
    }

    /// The empty line: how the body is delimited (RFC 9112 section 6.3).
    #[inline(always)]
    pub(super) fn end_head(&mut self, completed: &mut u8) -> Option<Stop> {
        let h = self.hflags;
        let m = self.mflags;
        self.remaining = 0;
        if m & M_RESPONSE != 0 {
            if m & M_TUNNEL != 0 {
                *completed = completed.wrapping_add(1);
                self.phase = P_TUNNEL;
            } else if m & M_NOBODY != 0 {
                self.complete(completed);
            } else if h & H_TE != 0 {
                if h & H_CHUNKED != 0 {
                    self.chunk_line();
                } else {
                    self.phase = P_UNTIL_CLOSE;
                }
            } else if h & H_CL != 0 {
                if self.length == 0 {
                    self.complete(completed);
                } else {
                    self.phase = P_BODY;
                    self.remaining = self.length;
                }
            } else {
                self.phase = P_UNTIL_CLOSE;
            }
            return None;
        }
        if h & H_UPGRADE != 0 {
            self.mflags |= M_HOLD;
        }
        if h & H_TE != 0 {
            if h & H_CHUNKED == 0 {
                return self.lose(LostReason::UnknownCoding);
            }
            self.chunk_line();
        } else if h & H_CL != 0 && self.length != 0 {
            self.phase = P_BODY;
            self.remaining = self.length;
        } else {
            self.complete(completed);
        }
        None
    }
}
