//! Sharded parameters: a state may hold only the elements `[begin, end)` of the row-major
//! rows × cols matrix (a dim-0 slice of whole rows, or a ZeRO-style flat range that starts and
//! ends inside rows). The randomized SVD then needs sums across the group, which the caller
//! supplies as an all-reduce; only O((m + n)·k) floats ever cross it.

use std::ffi::c_void;
use std::ops::Range;

use crate::error::{invalid, Error, Result};

/// The elements of the matrix a state holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Shard {
    pub begin: usize,
    pub end: usize,
}

impl Shard {
    pub fn whole(elements: usize) -> Shard {
        Shard { begin: 0, end: elements }
    }

    pub fn validate(&self, elements: usize) -> Result<()> {
        if self.begin > self.end || self.end > elements {
            return invalid!(
                "shard [{}, {}) is not a range of the matrix's {elements} elements (need begin <= end <= rows*cols)",
                self.begin,
                self.end
            );
        }
        Ok(())
    }

    pub fn len(&self) -> usize {
        self.end - self.begin
    }

    pub fn is_empty(&self) -> bool {
        self.begin == self.end
    }

    pub fn is_whole(&self, elements: usize) -> bool {
        self.begin == 0 && self.end == elements
    }

    /// The shard as whole rows plus at most two partial rows, for a matrix with `cols` columns.
    pub fn rows(&self, cols: usize) -> ShardRows {
        let (first, last) = (self.begin / cols, self.end / cols);
        let (c0, c1) = (self.begin % cols, self.end % cols);
        if self.is_empty() {
            return ShardRows { head: None, body: 0..0, tail: None };
        }
        if first == last {
            // Inside one row, neither end on a row boundary.
            return ShardRows { head: Some(Segment { row: first, cols: c0..c1 }), body: 0..0, tail: None };
        }
        let head = (c0 != 0).then_some(Segment { row: first, cols: c0..cols });
        let body_start = if c0 != 0 { first + 1 } else { first };
        let tail = (c1 != 0).then_some(Segment { row: last, cols: 0..c1 });
        ShardRows { head, body: body_start..last, tail }
    }
}

/// Part of one row.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Segment {
    pub row: usize,
    pub cols: Range<usize>,
}

/// A shard in row terms: `head` (the end of the row it starts in), whole rows `body`, `tail`
/// (the start of the row it ends in).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ShardRows {
    pub head: Option<Segment>,
    pub body: Range<usize>,
    pub tail: Option<Segment>,
}

impl ShardRows {
    pub fn segments(&self) -> impl Iterator<Item = &Segment> {
        self.head.iter().chain(self.tail.iter())
    }
}

/// The caller's all-reduce, as the C API receives it.
pub type AllReduceFn = unsafe extern "C" fn(data: *mut f32, count: usize, stream: *mut c_void, context: *mut c_void) -> i32;

/// "Sum this f32 buffer in place across the group": the only communication of a sharded state.
#[derive(Debug, Clone, Copy)]
pub struct Collective {
    pub all_reduce: AllReduceFn,
    pub context: *mut c_void,
}

// SAFETY: the context is the caller's; the library calls the function only from the thread that
// is stepping the state, which the C API makes one thread at a time.
unsafe impl Send for Collective {}
unsafe impl Sync for Collective {}

impl Collective {
    /// Sums `data` across the group; `what` names the buffer for the error message.
    #[allow(clippy::not_unsafe_ptr_arg_deref)] // `stream` is only handed on to the callback
    pub fn sum(&self, data: &mut [f32], stream: *mut c_void, what: &str) -> Result<()> {
        // SAFETY: `data` is valid for reads and writes of its length during the call (the
        // callback's contract).
        let code = unsafe { (self.all_reduce)(data.as_mut_ptr(), data.len(), stream, self.context) };
        if code != 0 {
            return Err(Error::Collective(format!(
                "the all-reduce callback returned {code} on the {what} ({} floats); the state and parameter shard are now inconsistent with the group: reload a checkpoint",
                data.len()
            )));
        }
        Ok(())
    }
}

/// The non-negativity statistics (sum of |x| and count of the negative entries) as four f32 that
/// sum exactly enough across ranks: each value split into a high and a low part.
pub fn pack_negatives(sum: f64, count: u64) -> [f32; 4] {
    let sum_hi = sum as f32;
    let sum_lo = (sum - sum_hi as f64) as f32;
    // Counts below 2^24 per part are exact in f32.
    let count_hi = (count >> 24) as f32;
    let count_lo = (count & 0xff_ffff) as f32;
    [sum_hi, sum_lo, count_hi, count_lo]
}

pub fn unpack_negatives(packed: &[f32; 4]) -> (f64, u64) {
    let sum = packed[0] as f64 + packed[1] as f64;
    let count = ((packed[2] as f64) * (1u64 << 24) as f64 + packed[3] as f64).round() as u64;
    (sum, count)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rows_split_into_head_body_tail() {
        let n = 10;
        let s = Shard { begin: 13, end: 47 };
        assert_eq!(
            s.rows(n),
            ShardRows { head: Some(Segment { row: 1, cols: 3..10 }), body: 2..4, tail: Some(Segment { row: 4, cols: 0..7 }) }
        );
        assert_eq!(Shard { begin: 20, end: 40 }.rows(n), ShardRows { head: None, body: 2..4, tail: None });
        assert_eq!(
            Shard { begin: 21, end: 25 }.rows(n),
            ShardRows { head: Some(Segment { row: 2, cols: 1..5 }), body: 0..0, tail: None }
        );
        assert_eq!(
            Shard { begin: 21, end: 30 }.rows(n),
            ShardRows { head: Some(Segment { row: 2, cols: 1..10 }), body: 3..3, tail: None }
        );
        assert_eq!(Shard { begin: 5, end: 5 }.rows(n).segments().count(), 0);
        // Every element is covered exactly once.
        for begin in 0..30 {
            for end in begin..=30 {
                let rows = Shard { begin, end }.rows(n);
                let mut covered: Vec<usize> = rows.body.clone().flat_map(|i| (0..n).map(move |j| i * n + j)).collect();
                for seg in rows.segments() {
                    covered.extend(seg.cols.clone().map(|j| seg.row * n + j));
                }
                covered.sort();
                assert_eq!(covered, (begin..end).collect::<Vec<_>>(), "[{begin}, {end})");
            }
        }
    }

    #[test]
    fn negative_statistics_survive_the_f32_round_trip() {
        for (sum, count) in [(0.0, 0), (1.0e-7, 1), (123456.789012345, 45_088_768), (3.0e9, (1 << 40) + 12345)] {
            let (s, c) = unpack_negatives(&pack_negatives(sum, count));
            assert_eq!(c, count);
            assert!((s - sum).abs() <= sum * 1e-12, "{s} vs {sum}");
        }
    }
}
