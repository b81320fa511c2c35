//! Statements over a batch of rows (a multi-row INSERT, an `IN (...)` list) in a few shapes that
//! repeat, so each shape is prepared once and kept.
//!
//! A batch statement has one shape per row count. Made fresh for every batch, each call paid
//! SQLite's parser (about a third of a small batch's cost on the writer thread); kept for every
//! count a consumer sees (1 to 256), the statements took megabytes. So a batch is cut into
//! chunks of the largest size and then powers of two (a batch of 13 under a largest size of 32
//! is 8 + 4 + 1): at most log2(largest) + 1 shapes per statement, each prepared once, and at most
//! that many statements per batch. PostgreSQL caches prepared statements per connection too,
//! so the same few shapes serve it alike.

/// `items` in chunks of `largest`, then of the powers of two below it that add up to the rest,
/// largest first. `largest` must be a power of two.
pub fn chunks<T>(items: &[T], largest: usize) -> impl Iterator<Item = &[T]> {
    assert!(
        largest.is_power_of_two(),
        "batch chunks are powers of two, not {largest}"
    );
    let mut rest = items;
    std::iter::from_fn(move || {
        if rest.is_empty() {
            return None;
        }
        // The largest power of two that fits (all of `largest` while there is that much).
        let size = if rest.len() >= largest {
            largest
        } else {
            1 << rest.len().ilog2()
        };
        let (chunk, after) = rest.split_at(size);
        rest = after;
        Some(chunk)
    })
}

/// `count` numbered placeholders from `$first` on, comma-separated: the inside of an `IN (...)`.
pub fn placeholders(first: usize, count: usize) -> String {
    (first..first + count)
        .map(|n| format!("${n}"))
        .collect::<Vec<_>>()
        .join(", ")
}

/// The VALUES rows of a multi-row INSERT: `rows` tuples of `columns`, where an empty column is the
/// next numbered placeholder and any other is written as is (a constant, or the database's clock).
pub fn rows_of_placeholders(rows: usize, columns: &[&str]) -> String {
    let mut next = 1;
    let mut row = |_| {
        let values = columns
            .iter()
            .map(|column| {
                if column.is_empty() {
                    next += 1;
                    format!("${}", next - 1)
                } else {
                    (*column).to_owned()
                }
            })
            .collect::<Vec<_>>();
        format!("({})", values.join(", "))
    };
    (0..rows).map(&mut row).collect::<Vec<_>>().join(", ")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sizes(count: usize, largest: usize) -> Vec<usize> {
        let items: Vec<usize> = (0..count).collect();
        chunks(&items, largest).map(<[usize]>::len).collect()
    }

    #[test]
    fn a_batch_is_cut_into_the_largest_size_then_powers_of_two() {
        assert_eq!(sizes(0, 32), Vec::<usize>::new());
        assert_eq!(sizes(1, 32), [1]);
        assert_eq!(sizes(13, 32), [8, 4, 1]);
        assert_eq!(sizes(32, 32), [32]);
        assert_eq!(sizes(100, 32), [32, 32, 32, 4]);
        assert_eq!(sizes(63, 32), [32, 16, 8, 4, 2, 1]);
    }

    #[test]
    fn every_item_comes_once_in_order_and_shapes_stay_few() {
        let largest = 64;
        let mut shapes = std::collections::BTreeSet::new();
        for count in 0..=300 {
            let items: Vec<usize> = (0..count).collect();
            let joined: Vec<usize> = chunks(&items, largest).flatten().copied().collect();
            assert_eq!(joined, items, "{count} items");
            shapes.extend(chunks(&items, largest).map(<[usize]>::len));
        }
        // 1, 2, 4 ... 64: log2(64) + 1 shapes whatever the batch.
        assert_eq!(shapes.len(), 7, "{shapes:?}");
    }

    #[test]
    fn placeholders_are_numbered_from_the_first() {
        assert_eq!(placeholders(3, 3), "$3, $4, $5");
        assert_eq!(
            rows_of_placeholders(2, &["", "0", ""]),
            "($1, 0, $2), ($3, 0, $4)"
        );
    }
}
