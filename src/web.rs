//! The phonebook page, embedded into the binary so the daemon serves it with no files
//! beside it and no CDN.

/// The embedded files: name, content, content type.
const ASSETS: &[(&str, &str, &str)] = &[
    (
        "index.html",
        include_str!("../web/index.html"),
        "text/html; charset=utf-8",
    ),
    (
        "phonebook.js",
        include_str!("../web/phonebook.js"),
        "text/javascript; charset=utf-8",
    ),
    (
        "app.js",
        include_str!("../web/app.js"),
        "text/javascript; charset=utf-8",
    ),
    (
        "stats.js",
        include_str!("../web/stats.js"),
        "text/javascript; charset=utf-8",
    ),
    (
        "style.css",
        include_str!("../web/style.css"),
        "text/css; charset=utf-8",
    ),
];

/// The content and content type of an embedded file, by name.
pub fn asset(name: &str) -> Option<(&'static str, &'static str)> {
    ASSETS
        .iter()
        .find(|(file, _, _)| *file == name)
        .map(|(_, body, content_type)| (*body, *content_type))
}
