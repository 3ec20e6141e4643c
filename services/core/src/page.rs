//! Paging of ordered lists (ListClaims): an opaque token is the offset of
//! the next item.

use crate::CoreError;

/// One page of a list and where the next one starts.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Page<T> {
    pub items: Vec<T>,
    /// Token for the next page; empty when this page reaches the end.
    pub next_token: String,
    /// Items in the whole list.
    pub total: u32,
}

/// The page of `all` that `token` (empty: the start) and `size` (0: all the
/// rest) select. A token past the end gives an empty last page; a token
/// that is not an offset is an error.
pub fn page<T>(all: Vec<T>, token: &str, size: u32) -> Result<Page<T>, CoreError> {
    let total = u32::try_from(all.len()).unwrap_or(u32::MAX);
    let start: usize = if token.is_empty() {
        0
    } else {
        token
            .parse()
            .map_err(|_| CoreError::InvalidPageToken(token.to_string()))?
    };
    let size = if size == 0 { usize::MAX } else { size as usize };
    let len = all.len();
    let items: Vec<T> = all.into_iter().skip(start).take(size).collect();
    let end = start.saturating_add(items.len());
    let next_token = if end < len {
        end.to_string()
    } else {
        String::new()
    };
    Ok(Page {
        items,
        next_token,
        total,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn size_zero_is_everything_in_one_page() {
        let p = page(vec![1, 2, 3], "", 0).unwrap();
        assert_eq!(p.items, vec![1, 2, 3]);
        assert_eq!(p.next_token, "");
        assert_eq!(p.total, 3);
        let empty = page(Vec::<u8>::new(), "", 0).unwrap();
        assert!(empty.items.is_empty());
        assert_eq!((empty.next_token.as_str(), empty.total), ("", 0));
    }

    #[test]
    fn pages_walk_the_list_with_their_tokens() {
        let all: Vec<u32> = (0..5).collect();
        let mut token = String::new();
        let mut seen = Vec::new();
        let mut pages = 0;
        loop {
            let p = page(all.clone(), &token, 2).unwrap();
            assert_eq!(p.total, 5);
            seen.extend(p.items);
            pages += 1;
            if p.next_token.is_empty() {
                break;
            }
            token = p.next_token;
        }
        assert_eq!(seen, all);
        assert_eq!(pages, 3);
        // an exact fit ends without an empty extra page
        let p = page(vec![1, 2], "", 2).unwrap();
        assert_eq!(p.next_token, "");
    }

    #[test]
    fn token_past_the_end_is_an_empty_last_page() {
        let p = page(vec![1, 2], "7", 2).unwrap();
        assert!(p.items.is_empty());
        assert_eq!((p.next_token.as_str(), p.total), ("", 2));
        let p = page(vec![1, 2], &usize::MAX.to_string(), 0).unwrap();
        assert!(p.items.is_empty());
    }

    #[test]
    fn bad_tokens_are_errors() {
        for t in ["x", "-1", "1.5", " 2"] {
            assert_eq!(
                page(vec![1], t, 1),
                Err(CoreError::InvalidPageToken(t.to_string()))
            );
        }
    }
}
