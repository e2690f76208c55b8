//! Collections: a named set of research material inside a project.
//!
//! The aggregate id is the collection's uuid. Values that carry rules (`CollectionName`,
//! `Description`, `ResearchLinks`) are built by `parse`, so a command that reaches the
//! aggregate is already well-formed; the aggregate only decides what the collection's history
//! allows.

use chrono::{DateTime, Utc};
use cqrs_es::event_sink::EventSink;
use cqrs_es::{Aggregate, DomainEvent};
use serde::{Deserialize, Serialize};
use uuid::Uuid;

use crate::domain::text::trimmed_visible;
use cutover_engine::upcast::{rename, Upcaster};

/// Longest collection name, in characters, after trimming.
pub const MAX_NAME_CHARS: usize = 200;
/// Longest description, in characters.
pub const MAX_DESCRIPTION_CHARS: usize = 10_000;
/// Most tags on one collection.
pub const MAX_TAGS: usize = 50;
/// Longest tag, in characters, after trimming.
pub const MAX_TAG_CHARS: usize = 64;
/// Most linked question ids, and separately most linked hypothesis ids.
pub const MAX_LINKED_IDS: usize = 200;

/// A value that broke one of the collection's input rules.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum InvalidCollectionInput {
    #[error("collection_name must not be empty")]
    EmptyName,
    #[error("collection_name has {0} characters; at most {MAX_NAME_CHARS} are allowed")]
    NameTooLong(usize),
    #[error("description has {0} characters; at most {MAX_DESCRIPTION_CHARS} are allowed")]
    DescriptionTooLong(usize),
    #[error("{0} tags given; at most {MAX_TAGS} are allowed")]
    TooManyTags(usize),
    #[error("tag {0} is empty")]
    EmptyTag(usize),
    #[error("tag {index} has {chars} characters; at most {MAX_TAG_CHARS} are allowed")]
    TagTooLong { index: usize, chars: usize },
    #[error("{field} has {count} ids; at most {MAX_LINKED_IDS} are allowed")]
    TooManyLinks { field: &'static str, count: usize },
}

impl InvalidCollectionInput {
    /// The request field the broken rule is about.
    pub fn field(&self) -> &'static str {
        match self {
            Self::EmptyName | Self::NameTooLong(_) => "collection_name",
            Self::DescriptionTooLong(_) => "description",
            Self::TooManyTags(_) | Self::EmptyTag(_) | Self::TagTooLong { .. } => "tags",
            Self::TooManyLinks { field, .. } => field,
        }
    }
}

/// A collection name: 1–200 characters once surrounding white space is trimmed, not all of
/// them invisible (see [`trimmed_visible`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CollectionName(String);

impl CollectionName {
    /// # Errors
    /// `EmptyName` when nothing visible is left once trimmed, `NameTooLong` past 200
    /// characters.
    pub fn parse(raw: &str) -> Result<Self, InvalidCollectionInput> {
        let trimmed = trimmed_visible(raw).ok_or(InvalidCollectionInput::EmptyName)?;
        let chars = trimmed.chars().count();
        if chars > MAX_NAME_CHARS {
            return Err(InvalidCollectionInput::NameTooLong(chars));
        }
        Ok(Self(trimmed.to_owned()))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

/// A free-text description of up to 10,000 characters; empty is allowed.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Description(String);

impl Description {
    /// # Errors
    /// `DescriptionTooLong` past 10,000 characters.
    pub fn parse(raw: &str) -> Result<Self, InvalidCollectionInput> {
        let chars = raw.chars().count();
        if chars > MAX_DESCRIPTION_CHARS {
            return Err(InvalidCollectionInput::DescriptionTooLong(chars));
        }
        Ok(Self(raw.to_owned()))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

/// The research a collection links to: tags, project question ids and hypothesis ids.
/// Tags are trimmed (one of only invisible characters is empty); repeated tags and ids are kept once, in the order first given.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct ResearchLinks {
    tags: Vec<String>,
    question_ids: Vec<Uuid>,
    hypothesis_ids: Vec<Uuid>,
}

impl ResearchLinks {
    /// # Errors
    /// A tag count over 50, an empty tag or one over 64 characters, or over 200 ids of a kind.
    pub fn parse(
        tags: &[String],
        question_ids: &[Uuid],
        hypothesis_ids: &[Uuid],
    ) -> Result<Self, InvalidCollectionInput> {
        if tags.len() > MAX_TAGS {
            return Err(InvalidCollectionInput::TooManyTags(tags.len()));
        }
        let mut clean_tags: Vec<String> = Vec::with_capacity(tags.len());
        for (index, tag) in tags.iter().enumerate() {
            let tag = trimmed_visible(tag).ok_or(InvalidCollectionInput::EmptyTag(index))?;
            let chars = tag.chars().count();
            if chars > MAX_TAG_CHARS {
                return Err(InvalidCollectionInput::TagTooLong { index, chars });
            }
            if !clean_tags.iter().any(|t| t == tag) {
                clean_tags.push(tag.to_owned());
            }
        }
        Ok(Self {
            tags: clean_tags,
            question_ids: distinct_ids("question_ids", question_ids)?,
            hypothesis_ids: distinct_ids("hypothesis_ids", hypothesis_ids)?,
        })
    }
}

fn distinct_ids(field: &'static str, ids: &[Uuid]) -> Result<Vec<Uuid>, InvalidCollectionInput> {
    if ids.len() > MAX_LINKED_IDS {
        return Err(InvalidCollectionInput::TooManyLinks {
            field,
            count: ids.len(),
        });
    }
    let mut out: Vec<Uuid> = Vec::with_capacity(ids.len());
    for id in ids {
        if !out.contains(id) {
            out.push(*id);
        }
    }
    Ok(out)
}

/// What a client may ask of a collection. Every command names the project the client believes
/// the collection is in; a collection in another project is treated as not found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CollectionCommand {
    CreateCollection {
        project_id: Uuid,
        name: CollectionName,
        description: Description,
    },
    UpdateCollection {
        project_id: Uuid,
        name: CollectionName,
        /// `None` only when following an old row whose description is NULL (the API always
        /// gives one: absent is empty).
        description: Option<Description>,
        /// `Some` only when following the old system: the old row's time of the change, which
        /// the event then carries (otherwise the read models show when it was recorded).
        updated_at: Option<DateTime<Utc>>,
    },
    SetResearchLinks {
        project_id: Uuid,
        links: ResearchLinks,
    },
    DeleteCollection {
        project_id: Uuid,
        /// As `UpdateCollection`'s.
        updated_at: Option<DateTime<Utc>>,
    },
    /// Adopts a collection that the old system created, with no events behind it. A collection
    /// that already has a history is left as it is, so importing twice appends once.
    ImportCollection {
        project_id: Uuid,
        name: CollectionName,
        /// `None` where the old row's description was NULL.
        description: Option<Description>,
        is_active: bool,
        created_at: DateTime<Utc>,
        updated_at: DateTime<Utc>,
    },
}

impl CollectionCommand {
    /// The command's name, as event metadata records it.
    pub fn name(&self) -> &'static str {
        match self {
            Self::CreateCollection { .. } => "CreateCollection",
            Self::UpdateCollection { .. } => "UpdateCollection",
            Self::SetResearchLinks { .. } => "SetResearchLinks",
            Self::DeleteCollection { .. } => "DeleteCollection",
            Self::ImportCollection { .. } => "ImportCollection",
        }
    }
}

/// Facts about a collection. Stored forever: names and shapes never change; a new shape is a
/// new variant or a new `event_version`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum CollectionEvent {
    /// Version 2.0 renamed `name` to `collection_name`, the old API's word for it.
    CollectionCreated {
        project_id: Uuid,
        collection_name: String,
        description: String,
    },
    /// Version 2.0 renamed `name` to `collection_name`. `description` is `null` where a
    /// followed old row's description is NULL (payloads written before it could be null hold
    /// a string, which still reads).
    CollectionUpdated {
        collection_name: String,
        description: Option<String>,
        /// The old system's time of the change, for a change followed from it; absent
        /// otherwise (and in every payload written before it existed): the read models then
        /// show the time the event was recorded.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        updated_at: Option<DateTime<Utc>>,
    },
    CollectionResearchLinksSet {
        tags: Vec<String>,
        question_ids: Vec<Uuid>,
        hypothesis_ids: Vec<Uuid>,
    },
    /// `updated_at`: as `CollectionUpdated`'s.
    CollectionDeleted {
        #[serde(default, skip_serializing_if = "Option::is_none")]
        updated_at: Option<DateTime<Utc>>,
    },
    /// The genesis of a collection adopted from the old system, with its old timestamps.
    /// `description` is `null` where the old row's was NULL (payloads written before it could
    /// be null hold a string, which still reads).
    CollectionImported {
        project_id: Uuid,
        name: String,
        description: Option<String>,
        is_active: bool,
        created_at: DateTime<Utc>,
        updated_at: DateTime<Utc>,
    },
}

impl DomainEvent for CollectionEvent {
    fn event_type(&self) -> String {
        match self {
            Self::CollectionCreated { .. } => "CollectionCreated",
            Self::CollectionUpdated { .. } => "CollectionUpdated",
            Self::CollectionResearchLinksSet { .. } => "CollectionResearchLinksSet",
            Self::CollectionDeleted { .. } => "CollectionDeleted",
            Self::CollectionImported { .. } => "CollectionImported",
        }
        .to_owned()
    }

    fn event_version(&self) -> String {
        match self {
            Self::CollectionCreated { .. } | Self::CollectionUpdated { .. } => "2.0",
            _ => "1.0",
        }
        .to_owned()
    }
}

/// The upcasters of collection events (see [`cutover_engine::upcast`]).
pub const UPCASTERS: &[Upcaster] = &[
    Upcaster {
        event_type: "CollectionCreated",
        from: "1.0",
        to: "2.0",
        apply: name_is_collection_name,
    },
    Upcaster {
        event_type: "CollectionUpdated",
        from: "1.0",
        to: "2.0",
        apply: name_is_collection_name,
    },
];

fn name_is_collection_name(
    fields: &mut serde_json::Map<String, serde_json::Value>,
) -> Result<(), String> {
    rename(fields, "name", "collection_name")
}

/// A rule of the collection's life that a command broke.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CollectionError {
    #[error("a collection with this id already exists")]
    AlreadyExists,
    #[error("no such collection in this project")]
    NotFound,
    #[error("the collection has been deleted")]
    Deleted,
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
enum Lifecycle {
    #[default]
    Absent,
    Active,
    Deleted,
}

/// The collection aggregate: only what its rules need (does it exist, in which project, is it
/// deleted). The read models hold the rest.
#[derive(Debug, Default, Serialize, Deserialize)]
pub struct Collection {
    lifecycle: Lifecycle,
    project_id: Option<Uuid>,
}

impl Collection {
    fn ensure_live_in(&self, project_id: Uuid) -> Result<(), CollectionError> {
        if self.project_id != Some(project_id) {
            return Err(CollectionError::NotFound);
        }
        match self.lifecycle {
            Lifecycle::Active => Ok(()),
            Lifecycle::Deleted => Err(CollectionError::Deleted),
            Lifecycle::Absent => Err(CollectionError::NotFound),
        }
    }
}

impl Aggregate for Collection {
    const TYPE: &'static str = "collection";
    type Command = CollectionCommand;
    type Event = CollectionEvent;
    type Error = CollectionError;
    type Services = ();

    async fn handle(
        &mut self,
        command: Self::Command,
        _services: &Self::Services,
        sink: &EventSink<Self>,
    ) -> Result<(), Self::Error> {
        let event = match command {
            CollectionCommand::CreateCollection {
                project_id,
                name,
                description,
            } => {
                if self.lifecycle != Lifecycle::Absent {
                    return Err(CollectionError::AlreadyExists);
                }
                CollectionEvent::CollectionCreated {
                    project_id,
                    collection_name: name.0,
                    description: description.0,
                }
            }
            CollectionCommand::UpdateCollection {
                project_id,
                name,
                description,
                updated_at,
            } => {
                self.ensure_live_in(project_id)?;
                CollectionEvent::CollectionUpdated {
                    collection_name: name.0,
                    description: description.map(|d| d.0),
                    updated_at,
                }
            }
            CollectionCommand::SetResearchLinks { project_id, links } => {
                self.ensure_live_in(project_id)?;
                CollectionEvent::CollectionResearchLinksSet {
                    tags: links.tags,
                    question_ids: links.question_ids,
                    hypothesis_ids: links.hypothesis_ids,
                }
            }
            CollectionCommand::DeleteCollection {
                project_id,
                updated_at,
            } => {
                self.ensure_live_in(project_id)?;
                CollectionEvent::CollectionDeleted { updated_at }
            }
            CollectionCommand::ImportCollection {
                project_id,
                name,
                description,
                is_active,
                created_at,
                updated_at,
            } => {
                if self.lifecycle != Lifecycle::Absent {
                    return Ok(());
                }
                CollectionEvent::CollectionImported {
                    project_id,
                    name: name.0,
                    description: description.map(|d| d.0),
                    is_active,
                    created_at,
                    updated_at,
                }
            }
        };
        sink.write(event, self).await;
        Ok(())
    }

    fn apply(&mut self, event: Self::Event) {
        match event {
            CollectionEvent::CollectionCreated { project_id, .. } => {
                self.lifecycle = Lifecycle::Active;
                self.project_id = Some(project_id);
            }
            CollectionEvent::CollectionUpdated { .. }
            | CollectionEvent::CollectionResearchLinksSet { .. } => {}
            CollectionEvent::CollectionDeleted { .. } => self.lifecycle = Lifecycle::Deleted,
            CollectionEvent::CollectionImported {
                project_id,
                is_active,
                ..
            } => {
                self.project_id = Some(project_id);
                self.lifecycle = if is_active {
                    Lifecycle::Active
                } else {
                    Lifecycle::Deleted
                };
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use cqrs_es::test::TestFramework;

    type CollectionTest = TestFramework<Collection>;

    const PROJECT: Uuid = Uuid::from_u128(0x1111);
    const OTHER_PROJECT: Uuid = Uuid::from_u128(0x2222);

    fn created() -> CollectionEvent {
        CollectionEvent::CollectionCreated {
            project_id: PROJECT,
            collection_name: "Interviews".into(),
            description: "Round one".into(),
        }
    }

    fn name(raw: &str) -> CollectionName {
        CollectionName::parse(raw).unwrap()
    }

    fn update(project_id: Uuid) -> CollectionCommand {
        CollectionCommand::UpdateCollection {
            project_id,
            name: name("Renamed"),
            description: Some(Description::parse("new words").unwrap()),
            updated_at: None,
        }
    }

    #[test]
    fn a_new_collection_is_created_with_its_trimmed_name() {
        CollectionTest::with(())
            .given_no_previous_events()
            .when(CollectionCommand::CreateCollection {
                project_id: PROJECT,
                name: name("  Interviews "),
                description: Description::parse("Round one").unwrap(),
            })
            .then_expect_events(vec![created()]);
    }

    #[test]
    fn creating_an_existing_collection_is_refused() {
        CollectionTest::with(())
            .given(vec![created()])
            .when(CollectionCommand::CreateCollection {
                project_id: PROJECT,
                name: name("Again"),
                description: Description::default(),
            })
            .then_expect_error(CollectionError::AlreadyExists);
    }

    #[test]
    fn a_live_collection_is_updated() {
        CollectionTest::with(())
            .given(vec![created()])
            .when(update(PROJECT))
            .then_expect_events(vec![CollectionEvent::CollectionUpdated {
                collection_name: "Renamed".into(),
                description: Some("new words".into()),
                updated_at: None,
            }]);
    }

    #[test]
    fn updating_a_collection_that_never_existed_is_not_found() {
        CollectionTest::with(())
            .given_no_previous_events()
            .when(update(PROJECT))
            .then_expect_error(CollectionError::NotFound);
    }

    #[test]
    fn a_collection_is_not_found_through_another_project() {
        CollectionTest::with(())
            .given(vec![created()])
            .when(update(OTHER_PROJECT))
            .then_expect_error(CollectionError::NotFound);
    }

    #[test]
    fn updating_a_deleted_collection_is_refused() {
        CollectionTest::with(())
            .given(vec![
                created(),
                CollectionEvent::CollectionDeleted { updated_at: None },
            ])
            .when(update(PROJECT))
            .then_expect_error(CollectionError::Deleted);
    }

    #[test]
    fn linking_a_deleted_collection_is_refused() {
        CollectionTest::with(())
            .given(vec![
                created(),
                CollectionEvent::CollectionDeleted { updated_at: None },
            ])
            .when(CollectionCommand::SetResearchLinks {
                project_id: PROJECT,
                links: ResearchLinks::default(),
            })
            .then_expect_error(CollectionError::Deleted);
    }

    #[test]
    fn deleting_twice_is_refused() {
        CollectionTest::with(())
            .given(vec![
                created(),
                CollectionEvent::CollectionDeleted { updated_at: None },
            ])
            .when(CollectionCommand::DeleteCollection {
                project_id: PROJECT,
                updated_at: None,
            })
            .then_expect_error(CollectionError::Deleted);
    }

    #[test]
    fn research_links_keep_each_tag_and_id_once_in_first_order() {
        let q1 = Uuid::from_u128(1);
        let q2 = Uuid::from_u128(2);
        let links = ResearchLinks::parse(
            &[" ux ".into(), "ux".into(), "pricing".into()],
            &[q2, q1, q2],
            &[],
        )
        .unwrap();
        CollectionTest::with(())
            .given(vec![created()])
            .when(CollectionCommand::SetResearchLinks {
                project_id: PROJECT,
                links,
            })
            .then_expect_events(vec![CollectionEvent::CollectionResearchLinksSet {
                tags: vec!["ux".into(), "pricing".into()],
                question_ids: vec![q2, q1],
                hypothesis_ids: vec![],
            }]);
    }

    fn import(is_active: bool) -> CollectionCommand {
        CollectionCommand::ImportCollection {
            project_id: PROJECT,
            name: name("Old"),
            description: None,
            is_active,
            created_at: DateTime::UNIX_EPOCH,
            updated_at: DateTime::UNIX_EPOCH,
        }
    }

    #[test]
    fn an_imported_collection_begins_its_history_with_the_old_row() {
        CollectionTest::with(())
            .given_no_previous_events()
            .when(import(false))
            .then_expect_events(vec![CollectionEvent::CollectionImported {
                project_id: PROJECT,
                name: "Old".into(),
                description: None,
                is_active: false,
                created_at: DateTime::UNIX_EPOCH,
                updated_at: DateTime::UNIX_EPOCH,
            }]);
    }

    #[test]
    fn an_import_payload_written_before_descriptions_could_be_null_still_reads() {
        let stored = serde_json::json!({"CollectionImported": {
            "project_id": PROJECT, "name": "Old", "description": "kept",
            "is_active": true, "created_at": "1970-01-01T00:00:00Z",
            "updated_at": "1970-01-01T00:00:00Z"}});
        let event: CollectionEvent = serde_json::from_value(stored).expect("an old payload");
        assert!(matches!(
            event,
            CollectionEvent::CollectionImported { description: Some(d), .. } if d == "kept"
        ));
    }

    #[test]
    fn update_and_delete_payloads_without_the_old_time_read_and_are_written_as_before() {
        let update = serde_json::json!({"CollectionUpdated": {
            "collection_name": "Renamed", "description": "words"}});
        let delete = serde_json::json!({"CollectionDeleted": {}});
        for stored in [update, delete] {
            let event: CollectionEvent =
                serde_json::from_value(stored.clone()).expect("an old payload");
            assert!(matches!(
                event,
                CollectionEvent::CollectionUpdated {
                    updated_at: None,
                    ..
                } | CollectionEvent::CollectionDeleted { updated_at: None }
            ));
            assert_eq!(serde_json::to_value(&event).unwrap(), stored);
        }
    }

    #[test]
    fn importing_a_collection_that_has_a_history_appends_nothing() {
        CollectionTest::with(())
            .given(vec![created()])
            .when(import(true))
            .then_expect_events(vec![]);
    }

    #[test]
    fn an_imported_inactive_collection_counts_as_deleted() {
        CollectionTest::with(())
            .given(vec![CollectionEvent::CollectionImported {
                project_id: PROJECT,
                name: "Old".into(),
                description: None,
                is_active: false,
                created_at: DateTime::UNIX_EPOCH,
                updated_at: DateTime::UNIX_EPOCH,
            }])
            .when(update(PROJECT))
            .then_expect_error(CollectionError::Deleted);
    }

    #[test]
    fn names_are_one_to_two_hundred_characters_after_trimming() {
        assert_eq!(
            CollectionName::parse("   "),
            Err(InvalidCollectionInput::EmptyName)
        );
        assert!(CollectionName::parse(&"é".repeat(200)).is_ok());
        assert_eq!(
            CollectionName::parse(&"é".repeat(201)),
            Err(InvalidCollectionInput::NameTooLong(201))
        );
    }

    #[test]
    fn names_and_tags_of_only_invisible_characters_are_empty() {
        for raw in ["\u{200b}", " \u{200c}\u{200d} ", "\u{2060}\u{feff}"] {
            assert_eq!(
                CollectionName::parse(raw),
                Err(InvalidCollectionInput::EmptyName),
                "{raw:?}"
            );
            assert_eq!(
                ResearchLinks::parse(&["ok".into(), raw.into()], &[], &[]),
                Err(InvalidCollectionInput::EmptyTag(1)),
                "{raw:?}"
            );
        }
    }

    #[test]
    fn a_name_with_a_joiner_between_visible_characters_is_kept_as_given() {
        CollectionTest::with(())
            .given_no_previous_events()
            .when(CollectionCommand::CreateCollection {
                project_id: PROJECT,
                name: name(" \u{1f469}\u{200d}\u{1f52c} "),
                description: Description::default(),
            })
            .then_expect_events(vec![CollectionEvent::CollectionCreated {
                project_id: PROJECT,
                collection_name: "\u{1f469}\u{200d}\u{1f52c}".into(),
                description: String::new(),
            }]);
    }

    #[test]
    fn descriptions_stop_at_ten_thousand_characters() {
        assert!(Description::parse(&"x".repeat(10_000)).is_ok());
        assert_eq!(
            Description::parse(&"x".repeat(10_001)),
            Err(InvalidCollectionInput::DescriptionTooLong(10_001))
        );
    }

    #[test]
    fn tags_are_bounded_in_count_and_length() {
        let fifty_one: Vec<String> = (0..51).map(|i| format!("t{i}")).collect();
        assert_eq!(
            ResearchLinks::parse(&fifty_one, &[], &[]),
            Err(InvalidCollectionInput::TooManyTags(51))
        );
        assert_eq!(
            ResearchLinks::parse(&["ok".into(), "x".repeat(65)], &[], &[]),
            Err(InvalidCollectionInput::TagTooLong {
                index: 1,
                chars: 65
            })
        );
        assert_eq!(
            ResearchLinks::parse(&[" ".into()], &[], &[]),
            Err(InvalidCollectionInput::EmptyTag(0))
        );
    }
}
