//! The chunked transfer coding (RFC 9112 section 7.1): chunk-size lines, the CRLF after chunk
//! data, and the trailer section. Chunk data itself is skipped by arithmetic, like a body.

use super::*;

impl DirFrame {
    /// chunk-size [ chunk-ext ] CRLF (RFC 9112 section 7.1); whitespace around the size tolerated.
    #[inline(always)]
    pub(super) fn chunk_size_byte(&mut self, b: u8) -> Option<Stop> {
        self.head_len = self.head_len.wrapping_add(1);
        if self.head_len > MAX_CHUNK_LINE {
            return self.lose(LostReason::BadChunk);
        }
        if b == LF {
            if self.val == C_LEAD {
                return self.lose(LostReason::BadChunk);
            }
            if self.remaining == 0 {
                self.phase = P_TRAILERS;
                self.line = L_LINE_START;
                self.head_len = 0;
            } else {
                self.phase = P_CHUNK_DATA;
            }
            return None;
        }
        if self.val == C_EXT {
            return None;
        }
        let d = hex_value(b);
        if d < 16 {
            if self.val == C_AFTER || self.remaining >> 60 != 0 {
                return self.lose(LostReason::BadChunk);
            }
            self.remaining = (self.remaining << 4) | d as u64;
            self.val = C_HEX;
            None
        } else if b == b';' {
            if self.val == C_LEAD {
                return self.lose(LostReason::BadChunk);
            }
            self.val = C_EXT;
            None
        } else if is_ws(b) || b == CR {
            if self.val == C_HEX {
                self.val = C_AFTER;
            }
            None
        } else {
            self.lose(LostReason::BadChunk)
        }
    }

    #[inline(always)]
    pub(super) fn chunk_crlf_byte(&mut self, b: u8) -> Option<Stop> {
        if self.val == 0 {
            if b != CR {
                return self.lose(LostReason::BadChunk);
            }
            self.val = 1;
        } else {
            if b != LF {
                return self.lose(LostReason::BadChunk);
            }
            self.chunk_line();
        }
        None
    }

    /// Trailer fields until the empty line; their content does not matter.
    #[inline(always)]
    pub(super) fn trailer_byte(&mut self, completed: &mut u8, b: u8) -> Option<Stop> {
        self.head_len = self.head_len.wrapping_add(1);
        if self.head_len > MAX_HEAD {
            return self.lose(LostReason::HeadTooLong);
        }
        if self.line == L_LINE_START || self.line == L_CR {
            if b == LF {
                self.complete(completed);
            } else if b == CR && self.line == L_LINE_START {
                self.line = L_CR;
            } else {
                self.line = L_VALUE;
            }
        } else if b == LF {
            self.line = L_LINE_START;
        }
        None
    }
}
