// The README's flows through a client generated from /openapi.json alone: openapi-typescript
// makes schema.d.ts (the paths and the answers' fields), openapi-fetch sends the requests, and
// tsc checks this file against them with no casts. Run: node build/flows.js <base-url> <token>.
// Exits non-zero, saying which step, on the first answer that is not the one expected.
import createClient from "openapi-fetch";
import type { paths } from "./schema.js";

const [baseUrl, token] = process.argv.slice(2);
if (baseUrl === undefined || token === undefined) {
  throw new Error("usage: node build/flows.js <base-url> <token>");
}
const client = createClient<paths>({ baseUrl, headers: { Authorization: `Bearer ${token}` } });

function check(step: string, ok: boolean, answer: unknown): void {
  if (!ok) {
    throw new Error(`${step}: unexpected answer ${JSON.stringify(answer)}`);
  }
  console.log(`${step}: ok`);
}

// Collections: create, read, set links demanding version "1", the same demand again refused as
// stale, rename (by the old API's `name`), list, read in the new shape, delete, gone.
const project_id = crypto.randomUUID();
const created = await client.POST("/projects/{project_id}/collections", {
  params: { path: { project_id } },
  body: { collection_name: "Interview notes", description: "Round one" },
});
const collection = created.data?.collection;
check(
  "create",
  created.response.status === 201 &&
    created.data?.version === 1 &&
    collection?.collection_name === "Interview notes" &&
    collection.description === "Round one" &&
    collection.is_active,
  created.data ?? created.error,
);
if (!collection) throw new Error("create: no collection");
const path = { project_id, collection_id: collection.collection_id };

const read = await client.GET("/projects/{project_id}/collections/{collection_id}", {
  params: { path },
});
check(
  "read",
  read.data?.version === 1 && read.data.collection?.collection_name === "Interview notes",
  read.data ?? read.error,
);

const linked = await client.PUT("/projects/{project_id}/collections/{collection_id}/links", {
  params: { path, header: { "If-Match": '"1"' } },
  body: { tags: ["ux", "pricing"] },
});
check('set links, If-Match "1"', linked.data?.version === 2, linked.data ?? linked.error);

const stale = await client.PUT("/projects/{project_id}/collections/{collection_id}", {
  params: { path, header: { "If-Match": '"1"' } },
  body: { collection_name: "Renamed" },
});
check('rename, If-Match "1" again (stale)', stale.error?.status === 412, stale.error);

const renamed = await client.PUT("/projects/{project_id}/collections/{collection_id}", {
  params: { path, header: { "If-Match": '"2"' } },
  body: { name: "Renamed", description: "Round two" },
});
check(
  "rename by the old API's name",
  renamed.data?.version === 3 && renamed.data.collection?.collection_name === "Renamed",
  renamed.data ?? renamed.error,
);

const listed = await client.GET("/projects/{project_id}/collections", {
  params: { path: { project_id }, query: { limit: 10 } },
});
check(
  "list",
  listed.data?.items.map((row) => row.collection_id).join() === collection.collection_id &&
    listed.data.next === null,
  listed.data ?? listed.error,
);

const newShape = await client.GET("/v2/projects/{project_id}/collections/{collection_id}", {
  params: { path },
});
check(
  "read the new shape",
  newShape.data?.collection.tags.join() === "pricing,ux" ||
    newShape.data?.collection.tags.join() === "ux,pricing",
  newShape.data ?? newShape.error,
);

const deleted = await client.DELETE("/projects/{project_id}/collections/{collection_id}", {
  params: { path, header: { "If-Match": renamed.response.headers.get("ETag") ?? "*" } },
});
check("delete", deleted.data?.version === 4, deleted.data ?? deleted.error);

const gone = await client.GET("/projects/{project_id}/collections/{collection_id}", {
  params: { path },
});
check("read the deleted one (410)", gone.error?.status === 410, gone.error);

const blank = await client.POST("/projects/{project_id}/collections", {
  params: { path: { project_id } },
  body: { collection_name: "   " },
});
check(
  "a broken rule (422 naming the field)",
  blank.error?.status === 422 && blank.error.field === "collection_name",
  blank.error,
);

// Batches: start, record a completion, read the batch in both shapes and its completions.
const batch_id = `batch-${crypto.randomUUID()}`;
const started = await client.POST("/batches", {
  body: { batch_id, expected_players: ["p1", "p2"] },
});
check(
  "start a batch",
  started.response.status === 201 && started.data?.batch?.expected_players.join() === "p1,p2",
  started.data ?? started.error,
);

const recorded = await client.POST("/batches/{batch_id}/completions", {
  params: { path: { batch_id } },
  body: { player_lookup: "p1", predictions_count: 3 },
});
check(
  "record a completion",
  recorded.response.status === 201 && recorded.data?.completion?.predictions_count === 3,
  recorded.data ?? recorded.error,
);

const redelivered = await client.POST("/batches/{batch_id}/completions", {
  params: { path: { batch_id } },
  body: { player_lookup: "p1", predictions_count: 3 },
});
check(
  "the same completion redelivered (200, counted once)",
  redelivered.response.status === 200 && redelivered.data?.completion?.predictions_count === 3,
  redelivered.data ?? redelivered.error,
);

const batch = await client.GET("/batches/{batch_id}", { params: { path: { batch_id } } });
check(
  "read the batch",
  batch.data?.batch?.predictions_by_player["p1"] === 3 &&
    batch.data.batch.completed_players.join() === "p1" &&
    !batch.data.batch.is_complete,
  batch.data ?? batch.error,
);

const summary = await client.GET("/v2/batches/{batch_id}", { params: { path: { batch_id } } });
check(
  "read the batch's new shape",
  summary.data?.batch.completed_count === 1 && summary.data.batch.expected_count === 2,
  summary.data ?? summary.error,
);

const completions = await client.GET("/v2/batches/{batch_id}/completions", {
  params: { path: { batch_id } },
});
const first = completions.data?.items[0];
check(
  "list the completions' new shape",
  first?.player_lookup === "p1" && typeof first.completed_at === "string",
  completions.data ?? completions.error,
);

// Competencies: record an attempt, read the competency in the new shape.
const student_id = 1 + Math.floor(Math.random() * 1_000_000_000);
const subskill = { subject: "math", skill_id: "fractions", subskill_id: "adding" };
const attempt = await client.POST("/students/{student_id}/attempts", {
  params: { path: { student_id } },
  body: { ...subskill, score: 8, analysis: "steady", feedback: "well done" },
});
check(
  "record an attempt",
  attempt.response.status === 201 &&
    attempt.data?.attempt?.student_id === student_id &&
    attempt.data.competency?.student_id === student_id,
  attempt.data ?? attempt.error,
);

const competency = await client.GET(
  "/v2/students/{student_id}/competencies/{subject}/{skill_id}/{subskill_id}",
  { params: { path: { student_id, ...subskill } } },
);
check(
  "read the competency's new shape",
  competency.data?.competency.total_attempts === 1 &&
    competency.data.competency.subskill_id === "adding",
  competency.data ?? competency.error,
);

const listedCompetencies = await client.GET("/v2/students/{student_id}/competencies", {
  params: { path: { student_id } },
});
check(
  "list the competencies' new shape",
  listedCompetencies.data?.items.length === 1,
  listedCompetencies.data ?? listedCompetencies.error,
);
// The event feed: a page of the log, and the next one from its `next`.
const events = await client.GET("/events", { params: { query: { after: 0, limit: 2 } } });
const firstEvent = events.data?.events[0];
check(
  "a page of the log",
  events.data?.events.length === 2 &&
    firstEvent?.position === 1 &&
    typeof firstEvent.aggregate_type === "string" &&
    typeof firstEvent.recorded_at === "string",
  events.data ?? events.error,
);
const after = events.data?.next ?? 0;
const more = await client.GET("/events", { params: { query: { after, limit: 2 } } });
check(
  "the next page from its next",
  (more.data?.events[0]?.position ?? 0) > after,
  more.data ?? more.error,
);
console.log("the typed client ran the README's flows");
