-- Shadow reads: while a domain is in shadow, a GET of the old API's routes is answered from the
-- read source as usual and, for a fraction of requests, also computed from the other model and
-- compared as the client would see it. The switch gate counts the reads and mismatches made
-- since the last rebuild, repair or retirement of the domain's projections.

-- The domains in shadow.
CREATE TABLE shadow_settings
(
    domain     text PRIMARY KEY REFERENCES read_sources (domain),
    -- the share of GETs that are also computed from the other model, in (0, 1]
    fraction   double precision NOT NULL CHECK (fraction > 0 AND fraction <= 1),
    -- how many shadow reads with no mismatch the switch gate wants
    min_reads  bigint           NOT NULL CHECK (min_reads >= 0),
    started_at timestamptz      NOT NULL DEFAULT now()
);

-- Shadow reads counted per route, for each state of the domain's projections: `since` is the
-- last rebuild, repair or retirement of one of them (max(projections.changed_at)) that the
-- reads saw, so a rebuild or repair starts a new window.
CREATE TABLE shadow_windows
(
    domain       text        NOT NULL,
    since        timestamptz NOT NULL,
    -- the route's template, e.g. /batches/{batch_id}
    route        text        NOT NULL,
    reads        bigint      NOT NULL,
    mismatches   bigint      NOT NULL,
    last_read_at timestamptz NOT NULL,
    PRIMARY KEY (domain, since, route)
);

-- The latest mismatches, with both answers as the client would have seen them (bodies
-- truncated past a bound; at most a bounded number kept per domain).
CREATE TABLE shadow_mismatches
(
    id            bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    domain        text        NOT NULL,
    since         timestamptz NOT NULL,
    route         text        NOT NULL,
    -- the request's path and query
    path          text        NOT NULL,
    seen_at       timestamptz NOT NULL,
    -- the model that answered the client
    served_source text        NOT NULL CHECK (served_source IN ('legacy', 'new')),
    -- {"status": …, "body": …} of each model's answer
    served        jsonb       NOT NULL,
    other         jsonb       NOT NULL
);
CREATE INDEX shadow_mismatches_by_domain ON shadow_mismatches (domain, id DESC);
