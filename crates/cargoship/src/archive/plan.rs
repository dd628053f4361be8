//! Planning suitcases: entries, in walk order, grouped so that each suitcase's tar stream
//! stays under the size cap (a single file larger than the cap gets a suitcase of its own).

use super::walk::Item;

/// Bytes an entry takes in a tar stream: a header (two for long names) and padded data.
pub fn tar_size(item: &Item) -> u64 {
    let headers = if item.path.len() > 99 || item.target.as_ref().is_some_and(|t| t.len() > 99) { 3 } else { 1 };
    headers * 512 + item.size.div_ceil(512) * 512
}

/// Splits `items` into suitcases of at most `cap` tar bytes each.
pub fn plan(items: Vec<Item>, cap: u64) -> Vec<Vec<Item>> {
    let mut out: Vec<Vec<Item>> = Vec::new();
    let mut cur: Vec<Item> = Vec::new();
    let mut size = 0;
    for item in items {
        let s = tar_size(&item);
        if !cur.is_empty() && size + s > cap {
            out.push(std::mem::take(&mut cur));
            size = 0;
        }
        size += s;
        cur.push(item);
    }
    if !cur.is_empty() || out.is_empty() {
        out.push(cur);
    }
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
}
