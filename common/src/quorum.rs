//! Quorum arithmetic for groups of n = 3f+1 with quorums of q = 2f+1.

/// Size of a storage group (or of the MS) that tolerates `f` Byzantine members.
pub const fn group_size(f: u32) -> usize {
    3 * f as usize + 1
}

/// Size of a Byzantine quorum in such a group. Any two quorums intersect in at
/// least f+1 members, so in at least one correct member.
pub const fn quorum_size(f: u32) -> usize {
    2 * f as usize + 1
}

/// MS fault threshold for a system of `n_nodes` (PROTOCOL.md, fault model):
/// 0 below four nodes, else clamp(⌊N/32⌋, 1, ms_f_max).
pub fn ms_f_for(n_nodes: usize, ms_f_max: u32) -> u32 {
    if n_nodes < 4 {
        0
    } else {
        ((n_nodes / 32) as u32).clamp(1, ms_f_max.max(1))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quorums_intersect_in_a_correct_member() {
        for f in 0..10 {
            let n = group_size(f);
            let q = quorum_size(f);
            assert!(2 * q - n > f as usize);
            assert!(n - q >= f as usize, "liveness with f silent");
        }
    }

    #[test]
    fn ms_size_follows_system_size() {
        assert_eq!(ms_f_for(1, 3), 0);
        assert_eq!(ms_f_for(3, 3), 0);
        assert_eq!(ms_f_for(4, 3), 1);
        assert_eq!(ms_f_for(8, 3), 1);
        assert_eq!(ms_f_for(64, 3), 2);
        assert_eq!(ms_f_for(100_000, 3), 3);
    }
}
