//! A double-ended queue stored in fixed-size blocks.
//!
//! A topic's log grows at the back and shrinks at the front. A single `VecDeque` would grow by doubling,
//! so up to half its capacity could sit unused, and every doubling leaves the old buffer behind in the
//! allocator; blocks keep the slack under one block and make memory per retained message predictable.

use std::collections::VecDeque;

/// Items per block.
const BLOCK: usize = 4096;

/// A deque of `T` in blocks of [`BLOCK`] items: push at the back, pop at the front, index in O(1).
#[derive(Debug)]
pub(crate) struct BlockDeque<T> {
    /// Every block but the first and last is full; the first may have lost items from its front.
    blocks: VecDeque<VecDeque<T>>,
    len: usize,
}

impl<T> BlockDeque<T> {
    pub fn new() -> Self {
        BlockDeque { blocks: VecDeque::new(), len: 0 }
    }

    pub fn len(&self) -> usize {
        self.len
    }

    pub fn push_back(&mut self, item: T) {
        match self.blocks.back_mut() {
            Some(block) if block.len() < BLOCK => block.push_back(item),
            _ => {
                let mut block = VecDeque::with_capacity(BLOCK);
                block.push_back(item);
                self.blocks.push_back(block);
            }
        }
        self.len += 1;
    }

    pub fn pop_front(&mut self) -> Option<T> {
        let first = self.blocks.front_mut()?;
        let item = first.pop_front();
        if first.is_empty() {
            self.blocks.pop_front();
        }
        if item.is_some() {
            self.len -= 1;
        }
        item
    }

    pub fn pop_back(&mut self) -> Option<T> {
        let last = self.blocks.back_mut()?;
        let item = last.pop_back();
        if last.is_empty() {
            self.blocks.pop_back();
        }
        if item.is_some() {
            self.len -= 1;
        }
        item
    }

    pub fn front(&self) -> Option<&T> {
        self.blocks.front().and_then(VecDeque::front)
    }

    pub fn back(&self) -> Option<&T> {
        self.blocks.back().and_then(VecDeque::back)
    }

    pub fn get(&self, index: usize) -> Option<&T> {
        let first = self.blocks.front()?;
        if index < first.len() {
            return first.get(index);
        }
        let rest = index - first.len();
        self.blocks.get(1 + rest / BLOCK)?.get(rest % BLOCK)
    }

    /// The items from `index` on, in order.
    pub fn iter_from(&self, index: usize) -> impl Iterator<Item = &T> {
        let (block, offset) = match self.blocks.front() {
            Some(first) if index < first.len() => (0, index),
            Some(first) => {
                let rest = index - first.len();
                (1 + rest / BLOCK, rest % BLOCK)
            }
            None => (0, 0),
        };
        let head = self.blocks.get(block).into_iter().flat_map(move |b| b.range(offset.min(b.len())..));
        let tail = self.blocks.range((block + 1).min(self.blocks.len())..).flat_map(VecDeque::iter);
        head.chain(tail)
    }

    /// The number of leading items for which `pred` holds, for items sorted so that `pred` is true
    /// then false (as `slice::partition_point`).
    pub fn partition_point(&self, mut pred: impl FnMut(&T) -> bool) -> usize {
        let (mut low, mut high) = (0, self.len);
        while low < high {
            let mid = low + (high - low) / 2;
            match self.get(mid) {
                Some(item) if pred(item) => low = mid + 1,
                _ => high = mid,
            }
        }
        low
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn indexes_across_blocks_after_front_pops() {
        let mut d = BlockDeque::new();
        for i in 0..(BLOCK * 3 + 5) {
            d.push_back(i);
        }
        for _ in 0..(BLOCK + 7) {
            d.pop_front();
        }
        assert_eq!(d.len(), BLOCK * 2 - 2);
        for i in 0..d.len() {
            assert_eq!(d.get(i), Some(&(i + BLOCK + 7)));
        }
        assert_eq!(d.get(d.len()), None);
        let tail: Vec<usize> = d.iter_from(BLOCK - 10).copied().collect();
        assert_eq!(tail, ((2 * BLOCK - 3)..(BLOCK * 3 + 5)).collect::<Vec<_>>());
        assert_eq!(d.iter_from(d.len()).count(), 0);
        assert_eq!(d.front(), Some(&(BLOCK + 7)));
        assert_eq!(d.back(), Some(&(BLOCK * 3 + 4)));
    }

    #[test]
    fn partition_point_finds_the_boundary() {
        let mut d = BlockDeque::new();
        for i in 0..10_000u32 {
            d.push_back(i);
        }
        assert_eq!(d.partition_point(|&x| x < 5000), 5000);
        assert_eq!(d.partition_point(|&x| x < 20_000), 10_000);
        assert_eq!(d.partition_point(|_| false), 0);
    }

    #[test]
    fn popping_everything_empties_it() {
        let mut d = BlockDeque::new();
        for i in 0..(BLOCK + 1) {
            d.push_back(i);
        }
        while d.pop_front().is_some() {}
        assert_eq!((d.len(), d.front(), d.get(0)), (0, None, None));
        d.push_back(7);
        assert_eq!(d.get(0), Some(&7));
    }
}
