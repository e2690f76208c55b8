//! What a domain's two read models must agree on, and the one query that compares them.
//!
//! A domain's new-shape projector declares, per table of its model, which legacy rows answer
//! for the same things ([`Comparison`]): how rows of both pair up, and each field old clients
//! see, written once over the legacy row `(l)` and once over the new row `(n)`. Verification
//! runs [`Comparison::sql`] for each; nothing else about a domain is written in the engine.

use crate::rows::Table;

/// One table of a domain's new model, against the legacy rows that hold the same facts.
#[derive(Debug)]
pub struct Comparison {
    /// The legacy table.
    pub legacy: &'static Table,
    /// The legacy rows compared, when they are not the table's rows as they are: a query over
    /// the table (in parentheses), whose columns `(l)` then names.
    pub legacy_rows: Option<&'static str>,
    /// The new table; its [`Table::aggregate`], over the key's parts by name, names the
    /// aggregate a difference is repaired by.
    pub new: &'static Table,
    /// The parts of a row's key, as `(name, over (l), over (n))`. The first [`Self::joined`] pair
    /// a legacy row with a new one (equal on each, as the legacy row and the new row have them);
    /// the others only tell where a row belongs (as the new row has them, else the legacy one).
    pub key: &'static [(&'static str, &'static str, &'static str)],
    pub joined: usize,
    /// The fields both show, as `(name, over (l), over (n))`, each compared as JSON.
    pub fields: &'static [(&'static str, &'static str, &'static str)],
}

impl Comparison {
    /// Its name in a report: `legacy/new`.
    pub fn name(&self) -> String {
        format!("{}/{}", self.legacy.name, self.new.name)
    }

    /// The query that compares every row of both: one row
    /// `(key jsonb, field text, legacy jsonb, new jsonb, aggregate text, NULL)` per differing
    /// field (a row present on one side only differs on field `row`), plus one row
    /// `(NULL, NULL, NULL, NULL, NULL, compared bigint)` with the number of rows compared.
    pub fn sql(&self) -> String {
        let (joined, located) = self.key.split_at(self.joined.min(self.key.len()));
        let parts: Vec<String> = joined
            .iter()
            .map(|(name, l, n)| format!("coalesce({l}, {n}) AS {name}"))
            .chain(
                located
                    .iter()
                    .map(|(name, l, n)| format!("coalesce({n}, {l}) AS {name}")),
            )
            .collect();
        let on: Vec<String> = joined
            .iter()
            .map(|(_, l, n)| format!("{l} = {n}"))
            .collect();
        let key: Vec<String> = self
            .key
            .iter()
            .map(|(name, _, _)| format!("'{name}', {name}"))
            .collect();
        let fields: String = self
            .fields
            .iter()
            .map(|(name, l, n)| format!(",\n ('{name}', to_jsonb({l}), to_jsonb({n}))"))
            .collect();
        let aggregate = self.new.aggregate.unwrap_or("NULL");
        format!(
            "WITH pairs AS (
                 SELECT {parts}, l, n,
                        l.present_ IS NOT NULL AS in_legacy, n.present_ IS NOT NULL AS in_new
                   FROM (SELECT s.*, true AS present_ FROM {legacy} AS s) AS l
                   FULL JOIN (SELECT s.*, true AS present_ FROM {new} AS s) AS n ON {on})
             SELECT jsonb_build_object({key}), f.field, f.legacy, f.new, ({aggregate})::text,
                    NULL::bigint
               FROM pairs CROSS JOIN LATERAL (VALUES
                   ('row', to_jsonb(in_legacy), to_jsonb(in_new)){fields}
               ) AS f(field, legacy, new)
              WHERE f.legacy IS DISTINCT FROM f.new
                AND (f.field = 'row' OR (in_legacy AND in_new))
             UNION ALL SELECT NULL, NULL, NULL, NULL, NULL, count(*) FROM pairs",
            parts = parts.join(", "),
            legacy = self.legacy_rows.unwrap_or(self.legacy.name),
            new = self.new.name,
            on = on.join(" AND "),
            key = key.join(", "),
        )
    }
}
