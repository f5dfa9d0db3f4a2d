//! Searchset Bundles with paging, built by the serving side (protocol.md §6).

use serde_json::{Value, json};

use super::search::{SearchUrl, encode};
use super::store::{Resource, ResourceStore, SearchHits, resource_key};

/// How a page of a search is cut.
#[derive(Debug, Clone, Copy)]
pub struct PageRequest {
    /// Index of the first match on this page.
    pub offset: usize,
    /// Matches per page.
    pub size: usize,
}

impl PageRequest {
    /// The page a request asks for: `_getpagesoffset` and `_count`, capped by the server's size.
    pub fn from_url(url: &SearchUrl, server_page_size: usize) -> Self {
        let number = |name| {
            url.values(name)
                .next()
                .and_then(|v| v.parse::<usize>().ok())
        };
        let size = number("_count")
            .map(|c| c.min(server_page_size))
            .unwrap_or(server_page_size)
            .max(1);
        Self {
            offset: number("_getpagesoffset").unwrap_or(0),
            size,
        }
    }
}

/// Builds one page of a searchset: matches marked `match`, their includes marked `include`,
/// `total` counting all matches, a `self` link echoing the request and `next` when more follow.
pub fn searchset_page(
    store: &ResourceStore,
    url: &SearchUrl,
    hits: &SearchHits,
    page: PageRequest,
    base: &str,
) -> Value {
    let base = base.trim_end_matches('/');
    let total = hits.matches.len();
    let end = (page.offset + page.size).min(total);
    let on_page: &[Resource] = hits.matches.get(page.offset..end).unwrap_or(&[]);
    let includes = store.includes(url, on_page);

    let entry = |resource: &Resource, mode: &str| {
        let full_url = resource_key(resource)
            .map(|k| format!("{base}/{k}"))
            .unwrap_or_default();
        json!({ "fullUrl": full_url, "resource": resource.as_ref(), "search": { "mode": mode } })
    };
    let mut entries: Vec<Value> = on_page.iter().map(|r| entry(r, "match")).collect();
    entries.extend(includes.iter().map(|r| entry(r, "include")));

    let mut links =
        vec![json!({ "relation": "self", "url": format!("{base}/{}", url.to_relative()) })];
    if end < total {
        let mut next = url.clone();
        next.params.retain(|(n, _)| n != "_getpagesoffset");
        next.params
            .push(("_getpagesoffset".to_owned(), end.to_string()));
        links.push(json!({ "relation": "next", "url": format!("{base}/{}", next.to_relative()) }));
    }

    json!({
        "resourceType": "Bundle",
        "id": uuid::Uuid::new_v4().to_string(),
        "type": "searchset",
        "total": total,
        "link": links,
        "entry": entries,
    })
}

/// The `next` link of a Bundle, if any.
pub fn next_link(bundle: &Value) -> Option<&str> {
    link(bundle, "next")
}

/// The link with the given relation.
pub fn link<'a>(bundle: &'a Value, relation: &str) -> Option<&'a str> {
    bundle["link"]
        .as_array()?
        .iter()
        .find(|l| l["relation"] == relation)?["url"]
        .as_str()
}

/// Resources of a Bundle with their `search.mode`.
pub fn entries(bundle: &Value) -> impl Iterator<Item = (&Value, Option<&str>)> {
    bundle["entry"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|e| (&e["resource"], e["search"]["mode"].as_str()))
}

/// Appends a query parameter to an already encoded URL.
pub fn with_param(url: &str, name: &str, value: &str) -> String {
    let separator = if url.contains('?') { '&' } else { '?' };
    format!("{url}{separator}{}={}", encode(name), encode(value))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::fhir::store::PatientScope;

    fn store_with(n: usize) -> ResourceStore {
        let mut store = ResourceStore::default();
        store
            .add(json!({"resourceType":"Patient","id":"p"}))
            .unwrap();
        for i in 0..n {
            store
                .add(json!({"resourceType":"Condition","id":format!("c{i}"),"subject":{"reference":"Patient/p"}}))
                .unwrap();
        }
        store
    }

    #[test]
    fn pages_chain_through_next_links_and_sum_to_the_total() {
        let store = store_with(5);
        let scope = PatientScope {
            patient_ref: "Patient/p".into(),
            bsn: "x".into(),
        };
        let base = "http://127.0.0.1:1/fhir";
        let mut url = SearchUrl::parse_relative("Condition").unwrap();
        let mut seen = 0;
        let mut pages = 0;
        loop {
            let hits = store.search(&url, &scope).unwrap();
            let bundle = searchset_page(&store, &url, &hits, PageRequest::from_url(&url, 2), base);
            assert_eq!(bundle["total"], 5);
            seen += entries(&bundle)
                .filter(|(_, m)| *m == Some("match"))
                .count();
            pages += 1;
            match next_link(&bundle) {
                Some(next) => url = SearchUrl::parse(next, base).unwrap(),
                None => break,
            }
        }
        assert_eq!((seen, pages), (5, 3));
    }
}
