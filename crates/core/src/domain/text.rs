//! The rule every text field shares: what counts as empty.

/// `raw` without surrounding white space, or `None` when nothing visible is left: a text made
/// only of white space, control characters and characters drawn as nothing (zero-width spaces
/// and joiners, direction marks, U+FEFF, variation selectors, fillers) is empty. Every text
/// field that must not be empty after trimming is read through this.
pub(crate) fn trimmed_visible(raw: &str) -> Option<&str> {
    let trimmed = raw.trim();
    trimmed.chars().any(|c| !is_invisible(c)).then_some(trimmed)
}

/// Whether `c` counts as nothing in a text that must not be empty: white space, a control
/// character, or a character drawn as nothing.
pub fn is_invisible(c: char) -> bool {
    c.is_whitespace() || c.is_control() || is_default_ignorable(c)
}

/// Whether `c` has Unicode's `Default_Ignorable_Code_Point` property (DerivedCoreProperties,
/// Unicode 15.1): characters a renderer shows as nothing, among them every invisible format
/// character (general category Cf) such as U+200B–U+200D, U+2060 and U+FEFF.
fn is_default_ignorable(c: char) -> bool {
    matches!(
        u32::from(c),
        0x00AD
            | 0x034F
            | 0x061C
            | 0x115F..=0x1160
            | 0x17B4..=0x17B5
            | 0x180B..=0x180F
            | 0x200B..=0x200F
            | 0x202A..=0x202E
            | 0x2060..=0x206F
            | 0x3164
            | 0xFE00..=0xFE0F
            | 0xFEFF
            | 0xFFA0
            | 0xFFF0..=0xFFF8
            | 0x1BCA0..=0x1BCA3
            | 0x1D173..=0x1D17A
            | 0xE0000..=0xE0FFF
    )
}

#[cfg(test)]
mod tests {
    use super::trimmed_visible;

    #[test]
    fn text_of_only_invisible_characters_is_empty() {
        for raw in [
            "",
            "  \t\n",
            "\u{200b}",
            "\u{200c}\u{200d}",
            " \u{2060} ",
            "\u{feff}",
            "\u{00ad}\u{034f}\u{180e}",
            "\u{202e}\u{2066}",
            "\u{3164}\u{ffa0}\u{fe0f}",
            "\u{e0001}\u{e0067}",
            "\u{1}\u{7f}",
        ] {
            assert_eq!(trimmed_visible(raw), None, "{raw:?}");
        }
    }

    #[test]
    fn visible_text_is_trimmed_of_white_space_only() {
        assert_eq!(trimmed_visible("  Notes "), Some("Notes"));
        assert_eq!(trimmed_visible("\u{200b}Notes"), Some("\u{200b}Notes"));
        assert_eq!(trimmed_visible("👩\u{200d}🔬"), Some("👩\u{200d}🔬"));
        assert_eq!(trimmed_visible("\u{a0}é\u{a0}"), Some("é"));
    }
}
