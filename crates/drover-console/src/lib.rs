//! Drover's web console: the files Vite built from `web/`, embedded in the binary so that the
//! console needs no CDN and no internet. The server serves them (`drover-server`'s `console`).

/// One file of the built console.
#[derive(Debug)]
pub struct Asset {
    /// From the console's root, with a leading `/`: `/index.html`, `/assets/index-HASH.js`.
    pub path: &'static str,
    pub mime: &'static str,
    pub body: &'static [u8],
    /// Named by its content's hash: a browser may keep it for good.
    pub immutable: bool,
}

include!(concat!(env!("OUT_DIR"), "/assets.rs"));

/// The file at `path`, if the console has one.
pub fn get(path: &str) -> Option<&'static Asset> {
    ASSETS.iter().find(|a| a.path == path)
}

/// The page every console route loads.
pub fn index() -> Option<&'static Asset> {
    get("/index.html")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_built_console_has_its_page_and_the_assets_it_names() {
        let index = index().map(|a| std::str::from_utf8(a.body).unwrap_or_default());
        let index = index.unwrap_or_default();
        assert!(index.contains("<main id=\"main\""), "{index}");
        // Every script and stylesheet the page loads is embedded, from this origin.
        let named: Vec<&str> = index
            .split(['"', '\''])
            .filter(|s| s.starts_with("/assets/"))
            .collect();
        assert!(named.len() >= 2, "{index}");
        for path in named {
            let asset = get(path);
            assert!(
                asset.is_some_and(|a| a.immutable && !a.body.is_empty()),
                "{path}"
            );
        }
        assert!(
            !index.contains("http://") && !index.contains("https://"),
            "{index}"
        );
    }
}
