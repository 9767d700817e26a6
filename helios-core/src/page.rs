//! Pages of a list (Google's AIP-158): a caller asks for at most `page_size` items and gets,
//! with them, a token for the next page. Every list has a stable order by a key per item, and a
//! token holds the last key it returned, so the next page starts after that key: an item added
//! or removed between pages neither repeats nor shifts the others (an item added before the
//! token's key is not seen, as with any cursor). A page also stops before the item that would
//! take it past `limits::MAX_PAGE_BYTES`, so no answer outgrows a default gRPC client.

use std::fmt::Write as _;

use crate::limits::MAX_PAGE_BYTES;

/// Items per page when the caller names no size, and the most it may ask for (a page is bounded
/// by bytes as well: most pages of the largest size are cut short by `MAX_PAGE_BYTES`).
pub const DEFAULT_PAGE_SIZE: u32 = 500;
pub const MAX_PAGE_SIZE: u32 = 5000;

/// The order of a list's keys.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Order {
    Ascending,
    Descending,
}

/// Which page a call asked for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PageRequest {
    /// The list and its filters, as a token names them: a token is refused by any other.
    scope: String,
    size: usize,
    /// The last key of the previous page.
    after: Option<String>,
}

/// A refused `page_size` or `page_token`: the field and the problem.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{field}: {problem}")]
pub struct PageError {
    pub field: &'static str,
    pub problem: String,
}

/// Separates a token's scope from its key (neither holds it: scopes are names, keys are ids,
/// names and numbers).
const SEPARATOR: char = '\u{1f}';

impl PageRequest {
    /// The page of `scope` (the list's name and its filters, e.g. `allocations?job=web`) that
    /// `page_size` (0: `DEFAULT_PAGE_SIZE`) and `page_token` (empty: the first page) ask for.
    pub fn new(scope: &str, page_size: u32, page_token: &str) -> Result<PageRequest, PageError> {
        if page_size > MAX_PAGE_SIZE {
            return Err(PageError { field: "page_size", problem: format!("must be at most {MAX_PAGE_SIZE}") });
        }
        let size = if page_size == 0 { DEFAULT_PAGE_SIZE } else { page_size };
        let after = if page_token.is_empty() {
            None
        } else {
            let refused = |problem: &str| PageError { field: "page_token", problem: problem.to_string() };
            let text = unhex(page_token).ok_or_else(|| refused("is not a token a list answered with"))?;
            let (token_scope, key) =
                text.split_once(SEPARATOR).ok_or_else(|| refused("is not a token a list answered with"))?;
            if token_scope != scope {
                return Err(refused("was given by another list, or the same list with other filters"));
            }
            Some(key.to_string())
        };
        Ok(PageRequest { scope: scope.to_string(), size: size as usize, after })
    }

    /// The page of `items` (put in `order` of `key`, which must be unique per item), each
    /// `weigh`ing its encoded size, and the token of the next page, empty when this is the last.
    pub fn page<T>(
        &self,
        mut items: Vec<T>,
        order: Order,
        key: impl Fn(&T) -> String,
        weigh: impl Fn(&T) -> usize,
    ) -> (Vec<T>, String) {
        items.sort_by_cached_key(|item| key(item));
        if order == Order::Descending {
            items.reverse();
        }
        let past = |k: &str| match (&self.after, order) {
            (None, _) => true,
            (Some(after), Order::Ascending) => k > after.as_str(),
            (Some(after), Order::Descending) => k < after.as_str(),
        };
        let mut page: Vec<T> = Vec::new();
        let mut bytes = 0;
        let mut more = false;
        for item in items.into_iter().filter(|item| past(&key(item))) {
            let weight = weigh(&item);
            if page.len() == self.size || (!page.is_empty() && bytes + weight > MAX_PAGE_BYTES) {
                more = true;
                break;
            }
            bytes += weight;
            page.push(item);
        }
        let next = match page.last() {
            Some(last) if more => hex(&format!("{}{SEPARATOR}{}", self.scope, key(last))),
            _ => String::new(),
        };
        (page, next)
    }
}

fn hex(text: &str) -> String {
    text.bytes().fold(String::with_capacity(text.len() * 2), |mut out, b| {
        let _ = write!(out, "{b:02x}");
        out
    })
}

fn unhex(text: &str) -> Option<String> {
    if !text.len().is_multiple_of(2) || text.len() > 4096 {
        return None;
    }
    let bytes: Option<Vec<u8>> =
        (0..text.len()).step_by(2).map(|i| u8::from_str_radix(text.get(i..i + 2)?, 16).ok()).collect();
    String::from_utf8(bytes?).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn names(n: usize) -> Vec<String> {
        (0..n).map(|i| format!("job-{i:03}")).collect()
    }

    /// Every page of `items` from the first, following tokens.
    fn all_pages(scope: &str, size: u32, items: &[String], order: Order) -> Vec<Vec<String>> {
        let mut pages = Vec::new();
        let mut token = String::new();
        loop {
            let request = PageRequest::new(scope, size, &token).expect("a token it gave");
            let (page, next) = request.page(items.to_vec(), order, Clone::clone, String::len);
            pages.push(page);
            if next.is_empty() {
                return pages;
            }
            token = next;
        }
    }

    #[test]
    fn pages_cover_the_list_once_in_order_and_the_last_has_no_token() {
        let items = names(7);
        let pages = all_pages("jobs", 3, &items, Order::Ascending);
        assert_eq!(pages.iter().map(Vec::len).collect::<Vec<_>>(), [3, 3, 1]);
        assert_eq!(pages.concat(), items);
        // A list that fills its last page exactly ends there, not with an empty page.
        assert_eq!(all_pages("jobs", 7, &items, Order::Ascending).len(), 1);
        let mut descending = items.clone();
        descending.reverse();
        assert_eq!(all_pages("jobs", 2, &descending, Order::Descending).concat(), descending);
        assert_eq!(all_pages("jobs", 0, &names(0), Order::Ascending), [Vec::<String>::new()]);
    }

    #[test]
    fn a_change_between_pages_neither_repeats_nor_skips_the_rest() {
        let items = names(6);
        let first = PageRequest::new("jobs", 3, "").expect("first");
        let (page, token) = first.page(items.clone(), Order::Ascending, Clone::clone, String::len);
        assert_eq!(page, items[..3]);
        // job-001 is removed and job-0045 added before the second page is read.
        let mut changed: Vec<String> = items.iter().filter(|n| *n != "job-001").cloned().collect();
        changed.push("job-0045".to_string());
        changed.sort();
        let second = PageRequest::new("jobs", 3, &token).expect("second");
        let (page, token) = second.page(changed, Order::Ascending, Clone::clone, String::len);
        assert_eq!(page, ["job-003", "job-004", "job-0045"]);
        assert!(!token.is_empty(), "job-005 is still to come");
    }

    #[test]
    fn a_page_stops_before_the_item_that_would_make_it_too_large_but_holds_at_least_one() {
        // Items of a third of the limit and a bit: two fit, a third would not.
        let third = MAX_PAGE_BYTES / 3 + 1;
        let request = PageRequest::new("versions", 0, "").expect("first");
        let (page, token) = request.page(names(5), Order::Ascending, Clone::clone, |_| third);
        assert_eq!((page.len(), token.is_empty()), (2, false));
        // One item larger than the limit goes alone rather than never.
        let (page, token) = request.page(names(2), Order::Ascending, Clone::clone, |_| MAX_PAGE_BYTES * 2);
        assert_eq!((page.len(), token.is_empty()), (1, false));
    }

    #[test]
    fn items_are_put_in_order_whatever_order_they_come_in() {
        let mut shuffled = names(5);
        shuffled.swap(0, 4);
        shuffled.swap(1, 3);
        let request = PageRequest::new("jobs", 0, "").expect("first");
        assert_eq!(request.page(shuffled.clone(), Order::Ascending, Clone::clone, String::len).0, names(5));
        let mut descending = names(5);
        descending.reverse();
        assert_eq!(request.page(shuffled, Order::Descending, Clone::clone, String::len).0, descending);
    }

    #[test]
    fn a_size_past_the_maximum_or_a_foreign_or_garbled_token_is_refused_by_field() {
        assert_eq!(PageRequest::new("jobs", MAX_PAGE_SIZE + 1, "").unwrap_err().field, "page_size");
        let (_, token) = PageRequest::new("allocations?job=web", 1, "").expect("first").page(
            names(2),
            Order::Ascending,
            Clone::clone,
            String::len,
        );
        let foreign = PageRequest::new("allocations?job=db", 1, &token).unwrap_err();
        assert_eq!(foreign.field, "page_token");
        assert!(foreign.problem.contains("other filters"), "{}", foreign.problem);
        for garbled in ["zz", "abc", "6a6f6273", &"00".repeat(3000)] {
            assert_eq!(PageRequest::new("jobs", 1, garbled).unwrap_err().field, "page_token", "{garbled}");
        }
    }
}
