//! Runs of head bytes framing only counts, taken in one turn: the start of a start line (kept
//! for `classify`), the rest of a line whose content does not matter, a header name that matches
//! none framing reads. Each turn still takes at most a block, and the head's bound holds byte for
//! byte.

use super::*;

impl DirFrame {
    /// Can the head byte `b` at `next_seq`, and those like it after it, be taken without a
    /// look: in a start line, its bytes before the one that completes [`START_LEN`] are only
    /// kept; in the rest of the start line once classified, and in the value of a header framing
    /// does not read, only the LF ending the line matters; in a name that matches none of the
    /// names framing reads, only what ends it (`:`) or breaks it (whitespace, CR, LF). Taking such
    /// bytes one by one changes nothing but `next_seq` and `head_len` (`name_idx` only matters
    /// while a name still matches).
    #[inline(always)]
    pub fn skippable(&self, b: u8) -> u8 {
        if self.phase == P_START {
            return if (self.start_len as usize) < START_LEN - 1 && b != LF { SKIP_START } else { SKIP_NONE };
        }
        if self.phase != P_HEAD {
            return SKIP_NONE;
        }
        let kind = if self.line == L_START_LINE || (self.line == L_VALUE && self.hdr != HDR_CL && self.hdr != HDR_TE) {
            SKIP_TO_LF
        } else if self.line == L_NAME && self.hdr == 0 {
            SKIP_NAME
        } else if self.line == L_NAME {
            SKIP_MATCH
        } else if self.line == L_LINE_START {
            // A name that starts like none of the names framing reads, or may be one (ws, `:`,
            // CR and LF, which end the head or break it, are not skipped: see `skips`).
            if matches!(lower(b), b'c' | b't' | b'u') {
                SKIP_MATCH
            } else {
                SKIP_NAME
            }
        } else {
            SKIP_NONE
        };
        if kind != SKIP_NONE && skips(kind, b) {
            kind
        } else {
            SKIP_NONE
        }
    }

    /// A name that may be one framing reads, from the byte at `off` of `block` (`len` loaded):
    /// each byte matched as `head_byte` would, up to the `:` (taken, as `begin_value`), the byte
    /// that rules out every name framing reads, or a byte that is no name byte (left to
    /// `head_byte`). Returns the bytes taken.
    #[inline(always)]
    pub(super) fn match_name(&mut self, block: &[u8; BLOCK], off: u32, len: u32) -> u32 {
        if self.line == L_LINE_START {
            self.line = L_NAME;
            self.name_idx = 0;
            self.hdr = CAND_ALL;
        }
        let avail = avail_in_block(off, len);
        let mut k = 0u32;
        while k < NAME_MAX as u32 {
            if k >= opaque(&avail) {
                break;
            }
            let c = block[((off + k) as usize) & (BLOCK - 1)];
            if c == b':' {
                self.begin_value();
                k += 1;
                break;
            }
            if !skips(SKIP_MATCH, c) {
                break;
            }
            self.name_byte(c);
            k += 1;
            if self.hdr == 0 {
                break;
            }
        }
        k
    }

    /// Bytes of a head that framing only counts (see [`Self::skippable`]), of kind `skip`, from
    /// the byte at `off` of `block` (`len` loaded). Returns the bytes taken.
    #[inline(always)]
    pub(super) fn skip_bytes(&mut self, block: &[u8; BLOCK], off: u32, len: u32, skip: u8) -> u32 {
        // The start of a start line is kept (for `classify`), up to its last byte, which
        // classifies it (the byte-by-byte path).
        let limit = if skip == SKIP_START { (START_LEN as u32 - 1).wrapping_sub(self.start_len as u32) } else { BLOCK as u32 };
        if skip == SKIP_NAME && self.line == L_LINE_START {
            // A new field line whose name matches nothing (what `head_byte` does with its
            // first byte, apart from matching).
            self.line = L_NAME;
            self.hdr = 0;
        }
        // A field line framing does not read goes in one turn: the rest of its name, the
        // `:` (a value not read, as `begin_value` says for a name that matched nothing), the
        // value, and the LF that ends it (`end_value` of such a value, or the end of the
        // start line, only starts the next line).
        let mut kind = skip;
        let avail = avail_in_block(off, len);
        let bound = if limit < avail { limit } else { avail };
        let mut k = 0u32;
        while k < BLOCK as u32 {
            if k >= opaque(&bound) {
                break;
            }
            let c = block[((off + k) as usize) & (BLOCK - 1)];
            if kind == SKIP_NAME && c == b':' {
                self.hdr = HDR_OTHER;
                self.line = L_VALUE;
                self.val = V_LEAD;
                self.te = 0;
                kind = SKIP_TO_LF;
            } else if kind == SKIP_TO_LF && c == LF {
                self.line = L_LINE_START;
                k += 1;
                break;
            } else if !skips(kind, c) {
                break;
            }
            if kind == SKIP_START {
                self.start[((self.start_len as u32 + k) as usize) & (START_LEN - 1)] = c;
            }
            k += 1;
        }
        if skip == SKIP_START {
            self.start_len = self.start_len.wrapping_add(k as u8);
        }
        k
    }
}
