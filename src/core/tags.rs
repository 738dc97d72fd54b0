//! Tags and the user's own label on a mapping (issue 16 item 2, beyond
//! GLADOS-00).
//!
//! The MIMI discovery requirements (R2) ask that a mapping can carry
//! per-provider preference tags, e.g. personal or business. GLADOS-00 has
//! one "preferred" provider only. An AP may attach, at creation, tags from
//! a small registered set ([`Tag`]) and the label its user typed for the
//! mapping ([`Label`]). Both travel with the mapping, in `all` query
//! answers and in its signed statement. Tags are a closed set so a sender
//! can act on them; the label is free text for people, bounded and free
//! of the invisible characters that could make it pass for another.

use core::fmt;

use serde::{Deserialize, Serialize};

use super::Problem;

/// A registered tag. Adding one is an API change (README, OpenAPI enum).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Tag {
    /// A private person's everyday account.
    Personal,
    /// An organisation's account (a shop, a bank, a service desk).
    Business,
    /// A person's account for their job.
    Work,
    /// An account shared with or reserved for family.
    Family,
}

/// Every registered tag, in the order the documents list them.
pub const REGISTERED: [Tag; 4] = [Tag::Personal, Tag::Business, Tag::Work, Tag::Family];

impl Tag {
    /// The tag's wire name.
    pub fn as_str(self) -> &'static str {
        match self {
            Tag::Personal => "personal",
            Tag::Business => "business",
            Tag::Work => "work",
            Tag::Family => "family",
        }
    }

    /// The registered tag named `s` (exact, lowercase).
    pub fn parse(s: &str) -> Option<Tag> {
        REGISTERED.into_iter().find(|t| t.as_str() == s)
    }
}

/// A mapping's tags: distinct registered tags, kept sorted so that equal
/// sets compare, store and sign the same.
#[derive(Debug, Clone, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(try_from = "Vec<Tag>", into = "Vec<Tag>")]
pub struct Tags(Vec<Tag>);

impl Tags {
    /// No tags.
    pub fn none() -> Tags {
        Tags(Vec::new())
    }

    /// Parses tag names as an AP sends them; unknown or repeated names are
    /// refused (a misspelt tag must not silently vanish).
    pub fn parse<S: AsRef<str>>(names: &[S]) -> Result<Tags, TagError> {
        if names.len() > REGISTERED.len() {
            return Err(TagError::TooMany { count: names.len() });
        }
        let mut tags = Vec::with_capacity(names.len());
        for n in names {
            let n = n.as_ref();
            let t = Tag::parse(n).ok_or_else(|| TagError::Unknown(shorten(n)))?;
            if tags.contains(&t) {
                return Err(TagError::Repeated(t.as_str()));
            }
            tags.push(t);
        }
        tags.sort();
        Ok(Tags(tags))
    }

    /// The tags, sorted.
    pub fn as_slice(&self) -> &[Tag] {
        &self.0
    }

    /// True when there are none.
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

impl TryFrom<Vec<Tag>> for Tags {
    type Error = TagError;
    fn try_from(v: Vec<Tag>) -> Result<Self, Self::Error> {
        let names: Vec<&str> = v.iter().map(|t| t.as_str()).collect();
        Tags::parse(&names)
    }
}

impl From<Tags> for Vec<Tag> {
    fn from(t: Tags) -> Vec<Tag> {
        t.0
    }
}

/// Longest label, in characters.
pub const MAX_LABEL_CHARS: usize = 64;

/// The user's own name for a mapping ("Work phone", "Büro"): 1..=64
/// characters after trimming, no control characters and none of the
/// invisible format characters (bidirectional overrides, zero-width
/// joiners and the like) that can make one text look like another.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct Label(String);

impl Label {
    /// Validates a label; surrounding whitespace is dropped.
    pub fn parse(s: &str) -> Result<Label, TagError> {
        let t = s.trim();
        if t.is_empty() {
            return Err(TagError::LabelEmpty);
        }
        let chars = t.chars().count();
        if chars > MAX_LABEL_CHARS {
            return Err(TagError::LabelTooLong { chars });
        }
        if let Some(c) = t.chars().find(|&c| c.is_control() || is_invisible(c)) {
            return Err(TagError::LabelCharacter {
                code_point: u32::from(c),
            });
        }
        Ok(Label(t.to_owned()))
    }

    /// The label.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl TryFrom<String> for Label {
    type Error = TagError;
    fn try_from(s: String) -> Result<Self, Self::Error> {
        Label::parse(&s)
    }
}

impl From<Label> for String {
    fn from(l: Label) -> String {
        l.0
    }
}

impl fmt::Display for Label {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// Format characters (Unicode category Cf) and other invisibles that have
/// no business in a label shown to people.
fn is_invisible(c: char) -> bool {
    matches!(u32::from(c),
        0x00AD | 0x034F | 0x061C | 0x115F | 0x1160 | 0x17B4 | 0x17B5 | 0x180B..=0x180F
        | 0x200B..=0x200F | 0x202A..=0x202E | 0x2060..=0x206F | 0x3164 | 0xFE00..=0xFE0F
        | 0xFEFF | 0xFFA0 | 0xFFF0..=0xFFFB | 0xE0000..=0xE0FFF)
}

/// What an AP attaches to a mapping it creates: tags and the user's label.
#[derive(Debug, Clone, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct MappingMeta {
    /// Registered tags.
    #[serde(default, skip_serializing_if = "Tags::is_empty")]
    pub tags: Tags,
    /// The user's own label.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub label: Option<Label>,
}

impl MappingMeta {
    /// True when neither tags nor a label are set.
    pub fn is_empty(&self) -> bool {
        self.tags.is_empty() && self.label.is_none()
    }

    /// Tags and label from an AP's request (both optional).
    pub fn parse<S: AsRef<str>>(
        tags: Option<&[S]>,
        label: Option<&str>,
    ) -> Result<MappingMeta, TagError> {
        Ok(MappingMeta {
            tags: match tags {
                Some(t) => Tags::parse(t)?,
                None => Tags::none(),
            },
            label: label.map(Label::parse).transpose()?,
        })
    }
}

/// Why tags or a label were refused.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum TagError {
    /// Not a registered tag (shortened for the message).
    Unknown(String),
    /// The same tag twice.
    Repeated(&'static str),
    /// More tags than there are registered ones.
    TooMany { count: usize },
    /// Empty (or only whitespace).
    LabelEmpty,
    /// Over [`MAX_LABEL_CHARS`].
    LabelTooLong { chars: usize },
    /// A control or invisible character.
    LabelCharacter { code_point: u32 },
}

fn shorten(s: &str) -> String {
    let mut out: String = s.chars().take(32).filter(|c| !c.is_control()).collect();
    if s.chars().count() > 32 {
        out.push('…');
    }
    out
}

impl fmt::Display for TagError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let registered = || {
            REGISTERED
                .iter()
                .map(|t| t.as_str())
                .collect::<Vec<_>>()
                .join(", ")
        };
        match self {
            TagError::Unknown(t) => write!(
                f,
                "{t:?} is not a registered tag; the registered tags are {}",
                registered()
            ),
            TagError::Repeated(t) => write!(f, "the tag {t:?} is given twice"),
            TagError::TooMany { count } => write!(
                f,
                "{count} tags given; a mapping has at most one of each registered tag ({})",
                registered()
            ),
            TagError::LabelEmpty => f.write_str("the label is empty"),
            TagError::LabelTooLong { chars } => write!(
                f,
                "the label has {chars} characters; at most {MAX_LABEL_CHARS} are allowed"
            ),
            TagError::LabelCharacter { code_point } => write!(
                f,
                "the label contains U+{code_point:04X}, a control or invisible character"
            ),
        }
    }
}

impl Problem for TagError {
    fn slug(&self) -> &'static str {
        match self {
            TagError::Unknown(_) | TagError::Repeated(_) | TagError::TooMany { .. } => {
                "invalid-tags"
            }
            _ => "invalid-label",
        }
    }
    fn title(&self) -> &'static str {
        match self {
            TagError::Unknown(_) | TagError::Repeated(_) | TagError::TooMany { .. } => {
                "Invalid tags"
            }
            _ => "Invalid label",
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tags_are_registered_distinct_and_sorted() {
        let t = Tags::parse(&["work", "personal"]).unwrap();
        assert_eq!(t.as_slice(), &[Tag::Personal, Tag::Work]);
        assert_eq!(Tags::parse(&["personal", "work"]).unwrap(), t);
        assert_eq!(Tags::parse::<&str>(&[]).unwrap(), Tags::none());
        let e = Tags::parse(&["Personal"]).unwrap_err();
        assert_eq!((e.slug(), e.status()), ("invalid-tags", 400));
        assert!(e.to_string().contains("personal, business, work, family"));
        assert_eq!(
            Tags::parse(&["work", "work"]),
            Err(TagError::Repeated("work"))
        );
        assert_eq!(
            Tags::parse(&["a", "b", "c", "d", "e"]),
            Err(TagError::TooMany { count: 5 })
        );
    }

    #[test]
    fn tags_round_trip_as_json_names() {
        let t = Tags::parse(&["family", "business"]).unwrap();
        let j = serde_json::to_string(&t).unwrap();
        assert_eq!(j, r#"["business","family"]"#);
        assert_eq!(serde_json::from_str::<Tags>(&j).unwrap(), t);
        assert!(serde_json::from_str::<Tags>(r#"["work","work"]"#).is_err());
        assert!(serde_json::from_str::<Tags>(r#"["robot"]"#).is_err());
    }

    #[test]
    fn labels_are_bounded_and_visible() {
        assert_eq!(Label::parse("  Büro  ").unwrap().as_str(), "Büro");
        assert_eq!(Label::parse(" \t "), Err(TagError::LabelEmpty));
        assert!(Label::parse(&"x".repeat(64)).is_ok());
        assert_eq!(
            Label::parse(&"é".repeat(65)),
            Err(TagError::LabelTooLong { chars: 65 })
        );
        for bad in [
            "a\u{0}b",
            "line\nbreak",
            "evil\u{202E}txt",
            "zero\u{200B}width",
        ] {
            let e = Label::parse(bad).unwrap_err();
            assert_eq!(e.slug(), "invalid-label", "{bad:?}");
        }
        assert!(serde_json::from_str::<Label>(r#""ok""#).is_ok());
        assert!(serde_json::from_str::<Label>(r#""""#).is_err());
    }

    #[test]
    fn meta_omits_what_is_absent() {
        let m = MappingMeta::parse::<&str>(None, None).unwrap();
        assert_eq!(serde_json::to_string(&m).unwrap(), "{}");
        let m = MappingMeta::parse(Some(&["work"]), Some("Office")).unwrap();
        assert_eq!(
            serde_json::to_string(&m).unwrap(),
            r#"{"tags":["work"],"label":"Office"}"#
        );
        assert!(MappingMeta::parse(Some(&["nope"]), None).is_err());
        assert!(MappingMeta::parse::<&str>(None, Some("")).is_err());
    }
}
