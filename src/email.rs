//! What looks like an email address: the one rule `load` checks a cell
//! by and transform keeps a trait by (a Segment email trait that fails it is
//! dropped with a warning, as an invalid birthdate is, so no row transform
//! writes is one the load refuses).

/// An address of the form `local@domain.tld`: one `@`, a local part of
/// dot-separated atoms, a domain of non-empty dot-separated labels, and
/// none of the characters that separate or quote addresses (`,;<>()[]":\\`)
/// or white space: two addresses in one cell, or a doubled `@`, are refused.
pub fn plausible(e: &str) -> bool {
    if e.is_ascii() {
        plausible_ascii_email(e.as_bytes())
    } else {
        plausible_email_by_chars(e)
    }
}

/// The rule by characters: one `@`, no empty dot-separated atom on either
/// side, a dot in the domain, no white space, control or `,;<>()[]":\`.
fn plausible_email_by_chars(e: &str) -> bool {
    let mut parts = e.split('@');
    let (Some(local), Some(domain), None) = (parts.next(), parts.next(), parts.next()) else {
        return false;
    };
    let atoms = |s: &str| !s.is_empty() && s.split('.').all(|a| !a.is_empty());
    atoms(local)
        && atoms(domain)
        && domain.contains('.')
        && !e
            .chars()
            .any(|c| c.is_whitespace() || c.is_control() || ",;<>()[]\":\\".contains(c))
}

/// The same rule over ASCII in one pass (a plan checks a million of them),
/// a table lookup a byte: ASCII white space and controls are the bytes up
/// to the space, and DEL; an empty atom shows as a dot or `@` after a dot,
/// an `@` or the start, or as a dot or `@` at the end.
fn plausible_ascii_email(e: &[u8]) -> bool {
    // Per byte: 1 refused anywhere, 2 a boundary of atoms, 4 the `@`.
    const CLASS: [u8; 256] = {
        let mut class = [0u8; 256];
        let mut b = 0;
        while b <= b' ' as usize {
            class[b] = 1;
            b += 1;
        }
        class[0x7f] = 1;
        let others = b",;<>()[]\":\\";
        let mut i = 0;
        while i < others.len() {
            class[others[i] as usize] = 1;
            i += 1;
        }
        class[b'.' as usize] = 2;
        class[b'@' as usize] = 2 | 4;
        class
    };
    // Bit 1: a refused byte; bit 8: an empty atom. The start acts as a
    // boundary, as an `@` would.
    let (mut found, mut ats, mut at, mut prev) = (0u8, 0usize, 0usize, 2u8);
    for (i, &b) in e.iter().enumerate() {
        let class = CLASS[b as usize];
        found |= class & 1 | (class & prev & 2) << 2;
        if class & 4 != 0 {
            ats += 1;
            at = i;
        }
        prev = class;
    }
    found == 0 && ats == 1 && prev & 2 == 0 && e[at + 1..].contains(&b'.')
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ascii_pass_agrees_with_the_rule_by_characters() {
        // Every string of up to six characters over an alphabet holding
        // each kind the rule tells apart, both paths.
        let alphabet = [b'a', b'@', b'.', b' ', b',', b'\\', 0x7f, b'\t'];
        let mut checked = 0;
        for len in 0..=6u32 {
            for mut n in 0..alphabet.len().pow(len) {
                let mut s = Vec::new();
                for _ in 0..len {
                    s.push(alphabet[n % alphabet.len()]);
                    n /= alphabet.len();
                }
                let s = String::from_utf8(s).unwrap();
                assert_eq!(
                    plausible_ascii_email(s.as_bytes()),
                    plausible_email_by_chars(&s),
                    "{s:?}"
                );
                checked += 1;
            }
        }
        assert!(checked > 290_000);
    }
}
