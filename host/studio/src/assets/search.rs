//! The asset search index (tantivy): derived state only. Everything in it can be rebuilt from the
//! database by [`SearchIndex::rebuild`], which startup uses when the index is missing, damaged or
//! out of step, and which `assets reindex` calls. It must never be the only copy of anything.

use super::Asset;
use crate::error::{Result, StudioError};
use std::ops::Bound;
use std::path::{Path, PathBuf};
use tantivy::collector::TopDocs;
use tantivy::query::{AllQuery, BooleanQuery, Occur, Query, QueryParser, RangeQuery, TermQuery};
use tantivy::schema::{FAST, Field, INDEXED, IndexRecordOption, STORED, STRING, Schema, TEXT};
use tantivy::{
    DocAddress, Index, IndexReader, IndexWriter, Order, ReloadPolicy, TantivyDocument, Term,
};

/// Heap for the single indexing thread (tantivy's minimum is 15 MB).
const WRITER_HEAP: usize = 32 * 1024 * 1024;

struct Fields {
    asset_id: Field,
    name: Field,
    prompt: Field,
    caption: Field,
    tags_text: Field,
    tag: Field,
    kind: Field,
    project: Field,
    model: Field,
    created: Field,
}

fn schema() -> (Schema, Fields) {
    let mut b = Schema::builder();
    let fields = Fields {
        asset_id: b.add_u64_field("asset_id", INDEXED | STORED | FAST),
        // The file name: what a LoRA (which has no prompt) is found by.
        name: b.add_text_field("name", TEXT),
        prompt: b.add_text_field("prompt", TEXT),
        caption: b.add_text_field("caption", TEXT),
        tags_text: b.add_text_field("tags_text", TEXT),
        tag: b.add_text_field("tag", STRING),
        kind: b.add_text_field("kind", STRING),
        project: b.add_u64_field("project", INDEXED),
        model: b.add_text_field("model", STRING),
        created: b.add_i64_field("created", INDEXED | FAST),
    };
    (b.build(), fields)
}

/// Filters and paging of a search; `text` empty means "everything, newest first".
#[derive(Debug, Clone, Default)]
pub struct SearchQuery {
    pub text: String,
    pub kind: Option<super::MediaKind>,
    pub project_id: Option<i64>,
    /// Every tag listed must be present.
    pub tags: Vec<String>,
    pub model: Option<String>,
    /// Creation time bounds in milliseconds, inclusive.
    pub since: Option<i64>,
    pub until: Option<i64>,
    pub limit: usize,
    pub offset: usize,
}

pub struct SearchIndex {
    dir: PathBuf,
    index: Index,
    reader: IndexReader,
    fields: Fields,
}

impl SearchIndex {
    /// Opens the index in `dir`, or creates an empty one there if it is missing or unreadable
    /// (the caller then rebuilds it from the database).
    pub fn open_or_create(dir: &Path) -> Result<(SearchIndex, bool)> {
        let (schema, fields) = schema();
        let opened = Index::open_in_dir(dir)
            .map_err(|e| e.to_string())
            .and_then(|index| {
                if index.schema() == schema {
                    Ok(index)
                } else {
                    Err("schema differs from this build".into())
                }
            });
        let (index, fresh) = match opened {
            Ok(index) => (index, false),
            Err(why) => {
                if dir.exists() {
                    tracing::warn!(dir = %dir.display(), %why, "search index unusable; recreating it");
                    std::fs::remove_dir_all(dir)?;
                }
                std::fs::create_dir_all(dir)?;
                (Index::create_in_dir(dir, schema)?, true)
            }
        };
        let reader = index
            .reader_builder()
            .reload_policy(ReloadPolicy::OnCommitWithDelay)
            .try_into()?;
        let index = SearchIndex {
            dir: dir.to_owned(),
            index,
            reader,
            fields,
        };
        Ok((index, fresh))
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Number of documents visible to searches.
    pub fn num_docs(&self) -> u64 {
        self.reader.searcher().num_docs()
    }

    fn writer(&self) -> Result<IndexWriter> {
        // Taken per write so the CLI and a running server can share the data directory.
        let mut tries = 0;
        loop {
            match self.index.writer_with_num_threads(1, WRITER_HEAP) {
                Ok(w) => return Ok(w),
                Err(tantivy::TantivyError::LockFailure(..)) if tries < 50 => {
                    tries += 1;
                    std::thread::sleep(std::time::Duration::from_millis(100));
                }
                Err(e) => return Err(e.into()),
            }
        }
    }

    fn document(&self, asset: &Asset) -> TantivyDocument {
        let f = &self.fields;
        let mut doc = TantivyDocument::new();
        doc.add_u64(f.asset_id, asset.id as u64);
        doc.add_text(f.name, &asset.original_name);
        doc.add_text(f.prompt, &asset.prompt);
        doc.add_text(f.caption, &asset.caption);
        doc.add_text(f.tags_text, asset.tags.join(" "));
        for tag in &asset.tags {
            doc.add_text(f.tag, tag);
        }
        doc.add_text(f.kind, asset.kind.as_str());
        doc.add_u64(f.project, asset.project_id.unwrap_or(0) as u64);
        if let Some(model) = &asset.model {
            doc.add_text(f.model, model);
        }
        doc.add_i64(f.created, asset.created_ms);
        doc
    }

    /// Adds or replaces the given assets and commits.
    pub fn upsert(&self, assets: &[Asset]) -> Result<()> {
        let mut writer = self.writer()?;
        for asset in assets {
            writer.delete_term(Term::from_field_u64(self.fields.asset_id, asset.id as u64));
            writer.add_document(self.document(asset))?;
        }
        writer.commit()?;
        self.reader.reload()?;
        Ok(())
    }

    /// Removes asset `id` and commits.
    pub fn remove(&self, id: i64) -> Result<()> {
        let mut writer = self.writer()?;
        writer.delete_term(Term::from_field_u64(self.fields.asset_id, id as u64));
        writer.commit()?;
        self.reader.reload()?;
        Ok(())
    }

    /// Replaces the whole index with documents for `assets` (read in batches by the caller).
    pub fn rebuild(&self, assets: impl Iterator<Item = Result<Asset>>) -> Result<u64> {
        let mut writer = self.writer()?;
        writer.delete_all_documents()?;
        let mut count = 0;
        for asset in assets {
            writer.add_document(self.document(&asset?))?;
            count += 1;
        }
        writer.commit()?;
        self.reader.reload()?;
        Ok(count)
    }

    /// Asset ids matching `q`, best first, with their scores.
    pub fn search(&self, q: &SearchQuery) -> Result<Vec<(i64, f32)>> {
        let f = &self.fields;
        let limit = q.limit.clamp(1, 1000);
        let mut clauses: Vec<(Occur, Box<dyn Query>)> = Vec::new();
        let text = q.text.trim();
        if !text.is_empty() {
            let mut parser =
                QueryParser::for_index(&self.index, vec![f.name, f.prompt, f.caption, f.tags_text]);
            parser.set_conjunction_by_default();
            // Lenient: user text with stray quotes or colons still searches instead of failing.
            let (query, _errors) = parser.parse_query_lenient(text);
            clauses.push((Occur::Must, query));
        }
        let term = |field: Field, value: &str| -> Box<dyn Query> {
            Box::new(TermQuery::new(
                Term::from_field_text(field, value),
                IndexRecordOption::Basic,
            ))
        };
        if let Some(kind) = q.kind {
            clauses.push((Occur::Must, term(f.kind, kind.as_str())));
        }
        for tag in &q.tags {
            clauses.push((Occur::Must, term(f.tag, tag)));
        }
        if let Some(model) = &q.model {
            clauses.push((Occur::Must, term(f.model, model)));
        }
        if let Some(project) = q.project_id {
            clauses.push((
                Occur::Must,
                Box::new(TermQuery::new(
                    Term::from_field_u64(f.project, project as u64),
                    IndexRecordOption::Basic,
                )),
            ));
        }
        if q.since.is_some() || q.until.is_some() {
            let bound = |t: Option<i64>| match t {
                Some(ms) => Bound::Included(Term::from_field_i64(f.created, ms)),
                None => Bound::Unbounded,
            };
            clauses.push((
                Occur::Must,
                Box::new(RangeQuery::new(bound(q.since), bound(q.until))),
            ));
        }
        let searcher = self.reader.searcher();
        let top = TopDocs::with_limit(limit).and_offset(q.offset);
        let hits: Vec<(f32, DocAddress)> = if text.is_empty() {
            let query: Box<dyn Query> = if clauses.is_empty() {
                Box::new(AllQuery)
            } else {
                Box::new(BooleanQuery::new(clauses))
            };
            let newest: Vec<(Option<i64>, DocAddress)> =
                searcher.search(&query, &top.order_by_fast_field("created", Order::Desc))?;
            newest.into_iter().map(|(_, addr)| (1.0, addr)).collect()
        } else {
            searcher.search(&BooleanQuery::new(clauses), &top.order_by_score())?
        };
        hits.into_iter()
            .map(|(score, addr)| {
                let ids = searcher
                    .segment_reader(addr.segment_ord)
                    .fast_fields()
                    .u64("asset_id")?;
                let id = ids.first(addr.doc_id).ok_or_else(|| {
                    StudioError::Internal(anyhow::anyhow!("search index document without asset_id"))
                })?;
                Ok((id as i64, score))
            })
            .collect()
    }
}
