//! Which query parameters are part of a request's key:
//! [`query_params`](super::CacheLayer::query_params) (an allowlist) and
//! [`ignore_query_params`](super::CacheLayer::ignore_query_params) (a denylist). The handler
//! still sees the whole query; only the key leaves parameters out.

/// A parameter name, or a prefix of names (`utm_*`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct NamePattern {
    name: String,
    prefix: bool,
}

impl NamePattern {
    /// `utm_*` is every name starting with `utm_`; anything else is that name exactly.
    pub(crate) fn parse(pattern: &str) -> Self {
        match pattern.strip_suffix('*') {
            Some(prefix) => NamePattern {
                name: prefix.to_owned(),
                prefix: true,
            },
            None => NamePattern {
                name: pattern.to_owned(),
                prefix: false,
            },
        }
    }

    fn matches(&self, name: &str) -> bool {
        if self.prefix {
            name.starts_with(&self.name)
        } else {
            name == self.name
        }
    }
}

/// The parameters kept in the key: those the allowlist names (all when there is none), less
/// those the denylist names.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub(crate) struct QueryFilter {
    only: Option<Vec<NamePattern>>,
    except: Vec<NamePattern>,
}

impl QueryFilter {
    /// Adds names to the allowlist (which exists from the first call on, even empty).
    pub(crate) fn allow(&mut self, patterns: impl IntoIterator<Item = NamePattern>) {
        self.only.get_or_insert_with(Vec::new).extend(patterns);
    }

    /// Adds names to the denylist.
    pub(crate) fn deny(&mut self, patterns: impl IntoIterator<Item = NamePattern>) {
        self.except.extend(patterns);
    }

    /// Whether every parameter is kept: the common case, with nothing to check per pair.
    pub(crate) fn keeps_all(&self) -> bool {
        self.only.is_none() && self.except.is_empty()
    }

    /// Whether the parameter `name` (with unreserved escapes decoded) is part of the key.
    pub(crate) fn keeps(&self, name: &str) -> bool {
        self.only
            .as_ref()
            .map_or(true, |only| only.iter().any(|p| p.matches(name)))
            && !self.except.iter().any(|p| p.matches(name))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn filter(only: Option<&[&str]>, except: &[&str]) -> QueryFilter {
        let mut f = QueryFilter::default();
        if let Some(only) = only {
            f.allow(only.iter().map(|p| NamePattern::parse(p)));
        }
        f.deny(except.iter().map(|p| NamePattern::parse(p)));
        f
    }

    #[test]
    fn allowlist_denylist_and_prefixes() {
        assert!(filter(None, &[]).keeps_all());
        let deny = filter(None, &["utm_*", "fbclid"]);
        assert!(!deny.keeps("utm_source") && !deny.keeps("utm_") && !deny.keeps("fbclid"));
        assert!(deny.keeps("utm") && deny.keeps("page") && deny.keeps("fbclid2"));
        let allow = filter(Some(&["page", "sort"]), &[]);
        assert!(allow.keeps("page") && allow.keeps("sort"));
        assert!(!allow.keeps("pages") && !allow.keeps("x"));
        let both = filter(Some(&["f_*"]), &["f_debug"]);
        assert!(both.keeps("f_color") && !both.keeps("f_debug") && !both.keeps("g"));
        assert!(!filter(Some(&[]), &[]).keeps("anything"));
    }
}
