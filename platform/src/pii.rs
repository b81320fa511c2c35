//! Masking of personal data (email addresses, phone numbers) before it reaches a log line or an
//! error message. The data itself is still stored and sent where the service needs it (the order,
//! the event, the notification); only what people and log pipelines read is masked, so an address
//! can still be recognised by whoever already knows it, and not harvested by whoever reads logs.

/// `ada@example.com` -> `a**@example.com`: the first character of the mailbox and the whole domain
/// (what deliverability problems are about) stay; the rest of the mailbox is hidden.
pub fn mask_email(email: &str) -> String {
    match email.rsplit_once('@') {
        Some((local, domain)) => {
            let mut chars = local.chars();
            let first = chars.next().map(String::from).unwrap_or_default();
            format!("{first}{}@{domain}", "*".repeat(chars.count().clamp(1, 8)))
        }
        None => mask_all(email),
    }
}

/// `+14155550100` -> `+*******0100`: the last four digits stay, as on a receipt.
pub fn mask_phone(phone: &str) -> String {
    let digits: Vec<char> = phone.chars().filter(char::is_ascii_digit).collect();
    if digits.len() < 8 {
        return mask_all(phone);
    }
    let kept: String = digits[digits.len() - 4..].iter().collect();
    let plus = if phone.starts_with('+') { "+" } else { "" };
    format!("{plus}{}{kept}", "*".repeat(digits.len() - 4))
}

fn mask_all(s: &str) -> String {
    "*".repeat(s.chars().count().clamp(1, 8))
}

/// Masks every email address and international phone number (`+` and 8 to 15 digits) found in
/// free text, such as a mail server's or an SMS gateway's error answer, which often quotes the
/// recipient back.
pub fn redact(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut rest = text;
    while !rest.is_empty() {
        // The next token: a maximal run of characters that can appear in an address or number.
        let start = rest.find(|c: char| is_token_char(c)).unwrap_or(rest.len());
        out.push_str(&rest[..start]);
        rest = &rest[start..];
        let end = rest.find(|c: char| !is_token_char(c)).unwrap_or(rest.len());
        let token = &rest[..end];
        out.push_str(&mask_token(token));
        rest = &rest[end..];
    }
    out
}

fn is_token_char(c: char) -> bool {
    c.is_alphanumeric() || "@.+-_%".contains(c)
}

fn mask_token(token: &str) -> String {
    // Trailing punctuation belongs to the sentence, not the address.
    let core = token.trim_end_matches(['.', '-']);
    let tail = &token[core.len()..];
    let masked = if let Some((local, domain)) = core.split_once('@') {
        if !local.is_empty() && domain.contains('.') && !domain.contains('@') {
            Some(mask_email(core))
        } else {
            None
        }
    } else if let Some(number) = core.strip_prefix('+') {
        let digits = number.chars().filter(char::is_ascii_digit).count();
        (number.chars().all(|c| c.is_ascii_digit() || c == '-') && (8..=15).contains(&digits))
            .then(|| mask_phone(core))
    } else {
        None
    };
    match masked {
        Some(masked) => format!("{masked}{tail}"),
        None => token.to_owned(),
    }
}

/// `smtps://user:pass@host` -> `smtps://user:***@host`, for messages that quote a URL setting.
pub fn redact_url_password(url: &str) -> String {
    match url.split_once("://") {
        Some((scheme, rest)) => {
            let authority_end = rest.find(['/', '?', '#']).unwrap_or(rest.len());
            let (authority, path) = rest.split_at(authority_end);
            match authority.rsplit_once('@') {
                Some((userinfo, host)) => {
                    let user = userinfo.split_once(':').map_or(userinfo, |(user, _)| user);
                    let hidden = if userinfo.contains(':') { ":***" } else { "" };
                    format!("{scheme}://{user}{hidden}@{host}{path}")
                }
                None => url.to_owned(),
            }
        }
        None => url.to_owned(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn addresses_and_numbers_keep_only_what_identifies_them_to_someone_who_knows() {
        assert_eq!(mask_email("ada@example.com"), "a**@example.com");
        assert_eq!(mask_email("a@example.com"), "a*@example.com");
        assert_eq!(mask_email("not-an-email"), "********");
        assert_eq!(mask_phone("+14155550100"), "+*******0100");
        assert_eq!(mask_phone("555"), "***");
    }

    #[test]
    fn free_text_is_masked_wherever_an_address_or_number_appears() {
        assert_eq!(
            redact("550 5.1.1 <ada@example.com>: Recipient address rejected"),
            "550 5.1.1 <a**@example.com>: Recipient address rejected"
        );
        assert_eq!(
            redact("{\"error\":\"+14155550100 is not reachable.\"}"),
            "{\"error\":\"+*******0100 is not reachable.\"}"
        );
        assert_eq!(
            redact("mail to ada@example.com."),
            "mail to a**@example.com."
        );
        // Amounts, ids, status codes and versions are not personal data.
        let plain = "order ord_01a2 total 39.98 USD, status 422, v1.2.3, +5 retries, a@b";
        assert_eq!(redact(plain), plain);
    }

    #[test]
    fn url_passwords_are_hidden_and_the_rest_kept() {
        assert_eq!(
            redact_url_password("smtps://user:hunter2@smtp.example.com:465/?tls=required"),
            "smtps://user:***@smtp.example.com:465/?tls=required"
        );
        assert_eq!(
            redact_url_password("smtp://mail.internal:25"),
            "smtp://mail.internal:25"
        );
    }
}
