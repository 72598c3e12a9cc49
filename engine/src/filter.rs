//! Selective replication: which records a peer gets, by class, tenant, group.

use crate::record::{Labels, Name};
use serde::{Deserialize, Serialize};
use std::collections::BTreeSet;

/// Include/exclude lists per label. An empty include list means "all"; an
/// exclude always wins over an include.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Filter {
    pub include_classes: BTreeSet<Name>,
    pub exclude_classes: BTreeSet<Name>,
    pub include_tenants: BTreeSet<Name>,
    pub exclude_tenants: BTreeSet<Name>,
    pub include_groups: BTreeSet<Name>,
    pub exclude_groups: BTreeSet<Name>,
}

fn allowed(name: &Name, include: &BTreeSet<Name>, exclude: &BTreeSet<Name>) -> bool {
    !exclude.contains(name) && (include.is_empty() || include.contains(name))
}

impl Filter {
    /// Everything passes.
    pub fn all() -> Self {
        Self::default()
    }

    pub fn passes(&self, labels: &Labels) -> bool {
        allowed(&labels.class, &self.include_classes, &self.exclude_classes)
            && allowed(&labels.tenant, &self.include_tenants, &self.exclude_tenants)
            && allowed(&labels.group, &self.include_groups, &self.exclude_groups)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn include_and_exclude() {
        let l = Labels::parse("recording", "acme", "sales").unwrap();
        assert!(Filter::all().passes(&l));
        let mut f = Filter::all();
        f.include_classes.insert(Name::new("user").unwrap());
        assert!(!f.passes(&l));
        f.include_classes.insert(Name::new("recording").unwrap());
        assert!(f.passes(&l));
        f.exclude_groups.insert(Name::new("sales").unwrap());
        assert!(!f.passes(&l));
    }
}
