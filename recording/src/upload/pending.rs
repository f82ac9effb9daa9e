//! The bytes of an upload not in a part yet.

use std::collections::VecDeque;

use bytes::Bytes;
use object_store::PutPayload;

/// Bytes written but not in a part yet, as the chunks they were written in: a part or a tail
/// is handed to the store as those chunks (cut where a part ends without copying), so a
/// recorded byte is copied only by the store.
#[derive(Debug, Default)]
pub(super) struct Pending {
    chunks: VecDeque<Bytes>,
    len: usize,
}

impl Pending {
    pub(super) fn len(&self) -> usize {
        self.len
    }

    pub(super) fn is_empty(&self) -> bool {
        self.len == 0
    }

    pub(super) fn push(&mut self, chunk: Bytes) {
        if !chunk.is_empty() {
            self.len += chunk.len();
            self.chunks.push_back(chunk);
        }
    }

    /// The first `n` bytes (all there are, if fewer), removed.
    pub(super) fn take(&mut self, n: usize) -> PutPayload {
        let mut want = n.min(self.len);
        self.len -= want;
        let mut out = Vec::new();
        while want > 0 {
            let Some(mut chunk) = self.chunks.pop_front() else {
                break;
            };
            if chunk.len() > want {
                let rest = chunk.split_off(want);
                self.chunks.push_front(rest);
            }
            want -= chunk.len();
            out.push(chunk);
        }
        out.into_iter().collect()
    }

    /// Everything, left in place (the chunks are shared, not copied).
    pub(super) fn payload(&self) -> PutPayload {
        self.chunks.iter().cloned().collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn bytes_of(payload: PutPayload) -> Vec<u8> {
        payload.iter().flat_map(|c| c.iter().copied()).collect()
    }

    #[test]
    fn pending_cuts_parts_at_exact_sizes_across_chunks() {
        let mut pending = Pending::default();
        let data: Vec<u8> = (0..=255u8).cycle().take(1000).collect();
        // Uneven chunks, an empty one among them.
        let mut at = 0;
        for size in [7, 0, 300, 1, 450, 242] {
            pending.push(Bytes::copy_from_slice(&data[at..at + size]));
            at += size;
        }
        assert_eq!(pending.len(), 1000);
        // What is stored as a tail leaves the bytes in place.
        assert_eq!(bytes_of(pending.payload()), data);
        assert_eq!(pending.len(), 1000);
        let mut out = Vec::new();
        for want in [100, 100, 0, 500] {
            let part = pending.take(want);
            assert_eq!(part.content_length(), want, "a part is exactly its size");
            out.extend(bytes_of(part));
        }
        assert_eq!(pending.len(), 300);
        // Asking for more than there is takes the rest.
        let rest = pending.take(usize::MAX);
        assert_eq!(rest.content_length(), 300);
        out.extend(bytes_of(rest));
        assert!(pending.is_empty());
        assert_eq!(out, data, "nothing dropped, duplicated or reordered");
        assert_eq!(pending.take(10).content_length(), 0);
    }
}
