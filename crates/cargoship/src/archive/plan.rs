//! Planning suitcases: entries, in walk order, grouped so that each suitcase's tar stream
//! stays under the size cap (a single file larger than the cap gets a suitcase of its own).

use super::walk::Item;

/// Bytes an entry takes in a tar stream: a header (two for long names) and padded data.
pub fn tar_size(item: &Item) -> u64 {
    let headers = if item.path.len() > 99 || item.target.as_ref().is_some_and(|t| t.len() > 99) { 3 } else { 1 };
    headers * 512 + item.size.div_ceil(512) * 512
}

/// Smallest suitcase worth splitting a tree for.
pub const MIN_SPLIT: u64 = 64 << 20;

/// Pieces a small tree is cut into (about; see [`effective_cap`]): the client's starting
/// window (`s3opt`'s default concurrency), so that all of them go up in the first round:
/// on a slow path a round is a whole piece's time, and nothing is learned before it ends.
pub const SMALL_TREE_PIECES: u64 = 64;
/// Largest piece of a small tree: under S3's 5 MiB part minimum, so each piece is one PUT.
pub const MAX_PIECE: u64 = 4 << 20;
const MIN_PIECE: u64 = 256 << 10;

/// The cap actually used: the user's cap, lowered so that a tree of a few hundred MiB or
/// more still makes about `2 x parallel` suitcases (never below [`MIN_SPLIT`]): several
/// suitcases keep `parallel` packers busy and hide each multipart completion behind the
/// next upload. A smaller tree is cut into about [`SMALL_TREE_PIECES`] pieces of 256 KiB
/// to 4 MiB instead: each goes up as a single PUT, side by side, as a file-by-file copy of
/// many small files would (a 5 MiB part alone takes 2.6 s on a 2 MB/s connection).
pub fn effective_cap(items: &[Item], cap: u64, parallel: usize) -> u64 {
    let total: u64 = items.iter().map(tar_size).sum();
    let split = total / (2 * parallel.max(1) as u64);
    if split >= MIN_SPLIT {
        return cap.min(split);
    }
    let mut piece = (total / SMALL_TREE_PIECES).clamp(MIN_PIECE, MAX_PIECE);
    // Whole entries leave each piece a little short of the cap: grow it until the pieces
    // fit in one round.
    while piece < MAX_PIECE && count(items, piece) > SMALL_TREE_PIECES as usize {
        piece = (piece + piece / 32).min(MAX_PIECE);
    }
    cap.min(piece)
}

/// How many suitcases [`plan`] makes of `items` with this cap.
fn count(items: &[Item], cap: u64) -> usize {
    cuts(items, cap).count() + 1
}

/// Where a new suitcase begins (indices into `items`, after the first).
fn cuts(items: &[Item], cap: u64) -> impl Iterator<Item = usize> + '_ {
    let mut size = 0;
    items.iter().enumerate().filter_map(move |(i, item)| {
        let s = tar_size(item);
        let cut = size > 0 && size + s > cap;
        size = if cut { s } else { size + s };
        cut.then_some(i)
    })
}

/// Whether a plan is a small tree's pieces (see [`effective_cap`]), which travel side by
/// side rather than `2 x parallel` at a time.
pub fn is_pieces(plan: &[Vec<Item>]) -> bool {
    plan.len() > 1 && plan.iter().filter(|s| s.iter().map(tar_size).sum::<u64>() <= MAX_PIECE).count() * 2 > plan.len()
}

/// Splits `items` into suitcases of at most `cap` tar bytes each.
pub fn plan(mut items: Vec<Item>, cap: u64) -> Vec<Vec<Item>> {
    let cuts: Vec<usize> = cuts(&items, cap).collect();
    let mut out: Vec<Vec<Item>> = cuts.iter().rev().map(|&at| items.split_off(at)).collect();
    out.push(items);
    out.reverse();
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::archive::inventory::Kind;

    fn file(path: &str, size: u64) -> Item {
        Item { path: path.into(), kind: Kind::File, size, mtime: 0, mtime_nsec: 0, mode: 0o644, target: None }
    }

    #[test]
    fn suitcases_stay_under_the_cap_and_keep_the_walk_order() {
        let items = vec![file("a", 1000), file("b", 1000), file("c", 10_000), file("d", 10)];
        let plan = plan(items, 3100);
        let names: Vec<Vec<&str>> = plan.iter().map(|s| s.iter().map(|i| i.path.as_str()).collect()).collect();
        assert_eq!(names, [vec!["a", "b"], vec!["c"], vec!["d"]]);
        assert_eq!(super::plan(vec![], 10).len(), 1, "an empty tree still makes one (empty) suitcase");
    }

    #[test]
    fn a_mid_sized_tree_is_split_for_parallel_suitcases_but_not_into_slivers() {
        let gib = 1 << 30;
        let tree: Vec<Item> = (0..64).map(|i| file(&format!("f{i}"), 10 << 20)).collect();
        assert_eq!(effective_cap(&tree, gib, 2), 160 * (1 << 20) + 64 * 512 / 4);
        let small: Vec<Item> = (0..4).map(|i| file(&format!("f{i}"), 10 << 20)).collect();
        assert_eq!(
            effective_cap(&small, gib, 2),
            (40 * (1 << 20) + 4 * 512) / SMALL_TREE_PIECES,
            "40 MiB: 64 pieces' cap"
        );
        let tiny: Vec<Item> = (0..40).map(|i| file(&format!("f{i}"), 100 << 10)).collect();
        assert_eq!(effective_cap(&tiny, gib, 2), MIN_PIECE, "4 MiB: pieces of at least 256 KiB");
        assert_eq!(effective_cap(&tree, 100 << 20, 2), 100 << 20, "the user's cap wins when lower");
    }

    #[test]
    fn a_small_tree_is_cut_into_single_put_pieces() {
        let gib = 1 << 30;
        let tree: Vec<Item> = (0..1000).map(|i| file(&format!("f{i:04}"), 64 << 10)).collect();
        let cap = effective_cap(&tree, gib, 2);
        assert!((66_048_000 / 64..66_048_000 / 60).contains(&cap), "63 MiB of tar: pieces of about 1 MiB, not {cap}");
        let pieces = plan(tree, cap);
        assert_eq!(pieces.len(), 63, "16 files of 64.5 KiB per piece: one round of 64 requests, not 67 pieces");
        assert!(is_pieces(&pieces));
        let tiny: Vec<Item> = (0..10).map(|i| file(&format!("t{i}"), 1000)).collect();
        assert_eq!(plan(tiny.clone(), effective_cap(&tiny, gib, 2)).len(), 1, "a tiny tree stays one suitcase");
        assert!(!is_pieces(&plan(tiny, gib)));
        let big: Vec<Item> = (0..64).map(|i| file(&format!("f{i}"), 10 << 20)).collect();
        assert!(!is_pieces(&plan(big.clone(), effective_cap(&big, gib, 2))));
    }
}
