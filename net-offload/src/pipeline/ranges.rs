//! Port ranges as value/mask pairs, so a range costs O(log n) flows.

/// The fewest (value, mask) pairs whose union is exactly `lo..=hi`.
pub fn port_range_masks(lo: u16, hi: u16) -> Vec<(u16, u16)> {
    let (mut lo, hi) = (u32::from(lo), u32::from(hi));
    let mut out = Vec::new();
    while lo <= hi {
        // The largest aligned block starting at `lo` that stays within `hi`.
        let mut size: u32 = if lo == 0 {
            1 << 16
        } else {
            1 << lo.trailing_zeros()
        };
        while lo + size - 1 > hi {
            size >>= 1;
        }
        let mask = (!(size - 1)) & 0xffff;
        out.push((lo as u16, mask as u16));
        lo += size;
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn covered(pairs: &[(u16, u16)]) -> Vec<u16> {
        (0..=u16::MAX)
            .filter(|p| pairs.iter().any(|(v, m)| p & m == *v))
            .collect()
    }

    #[test]
    fn single_port_and_full_range() {
        assert_eq!(port_range_masks(80, 80), vec![(80, 0xffff)]);
        assert_eq!(port_range_masks(0, u16::MAX), vec![(0, 0)]);
        assert_eq!(port_range_masks(1024, 2047), vec![(1024, 0xfc00)]);
    }

    #[test]
    fn ranges_are_exact() {
        for (lo, hi) in [(1000, 2000), (1, 65535), (80, 81), (79, 80), (33000, 33999)] {
            let pairs = port_range_masks(lo, hi);
            assert_eq!(covered(&pairs), (lo..=hi).collect::<Vec<_>>(), "{lo}-{hi}");
            assert!(pairs.len() <= 32);
        }
    }
}
