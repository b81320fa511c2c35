//! Keyset pagination for List calls: the page token is the position of the last row returned, so
//! pages stay stable while rows are added (an offset would skip or repeat rows).

use tonic_types::FieldViolation;

/// Page size when the request gives none.
pub const DEFAULT_PAGE_SIZE: i32 = 50;
/// Largest page a request may ask for.
pub const MAX_PAGE_SIZE: i32 = 500;

/// A validated page request: return up to `size` rows positioned after `after`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PageRequest {
    pub size: i32,
    pub after: i64,
}

impl PageRequest {
    /// Reads `page_size` and `page_token`, adding a violation for each bad one.
    pub fn parse(page_size: i32, page_token: &str, violations: &mut Vec<FieldViolation>) -> Self {
        let size = match page_size {
            0 => DEFAULT_PAGE_SIZE,
            n if (1..=MAX_PAGE_SIZE).contains(&n) => n,
            _ => {
                violations.push(FieldViolation::new(
                    "page_size",
                    format!("must be between 0 (default {DEFAULT_PAGE_SIZE}) and {MAX_PAGE_SIZE}"),
                ));
                DEFAULT_PAGE_SIZE
            }
        };
        let after = match page_token {
            "" => 0,
            token => token
                .parse::<i64>()
                .ok()
                .filter(|n| *n >= 0)
                .unwrap_or_else(|| {
                    violations.push(FieldViolation::new(
                        "page_token",
                        "not a token this call returned; leave it empty for the first page",
                    ));
                    0
                }),
        };
        Self { size, after }
    }

    /// How many rows to fetch: one more than the page, to learn whether another page follows.
    pub fn fetch_limit(&self) -> i64 {
        i64::from(self.size) + 1
    }

    /// Cuts `rows` (fetched with [`fetch_limit`](Self::fetch_limit)) to the page and returns the next
    /// page token, empty on the last page.
    pub fn finish<T>(&self, rows: &mut Vec<T>, position: impl Fn(&T) -> i64) -> String {
        let size = self.size as usize;
        if rows.len() > size {
            rows.truncate(size);
            rows.last()
                .map(|r| position(r).to_string())
                .unwrap_or_default()
        } else {
            String::new()
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_and_bounds() {
        let mut v = Vec::new();
        assert_eq!(
            PageRequest::parse(0, "", &mut v),
            PageRequest {
                size: DEFAULT_PAGE_SIZE,
                after: 0
            }
        );
        assert_eq!(
            PageRequest::parse(7, "42", &mut v),
            PageRequest { size: 7, after: 42 }
        );
        assert!(v.is_empty());
        PageRequest::parse(-1, "x", &mut v);
        PageRequest::parse(MAX_PAGE_SIZE + 1, "-5", &mut v);
        let fields: Vec<_> = v.iter().map(|v| v.field.as_str()).collect();
        assert_eq!(
            fields,
            ["page_size", "page_token", "page_size", "page_token"]
        );
    }

    #[test]
    fn finish_cuts_to_the_page_and_points_at_its_last_row() {
        let page = PageRequest { size: 2, after: 0 };
        let mut rows = vec![10, 11, 12];
        assert_eq!(page.finish(&mut rows, |r| *r), "11");
        assert_eq!(rows, [10, 11]);
        let mut rows = vec![10, 11];
        assert_eq!(page.finish(&mut rows, |r| *r), "");
    }
}
