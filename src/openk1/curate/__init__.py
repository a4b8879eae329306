"""The RL prompt-set filters of `openk1 curate` (report §2.1), one module per filter, in the
order the stage (stages/curate.py) runs them:

    format.py      reference answer check, then multiple-choice / true-false / proof questions
    dedup.py       exact and near duplicates (MinHash + LSH), decontamination against eval sets
    tagging.py     domain + discipline tags (keywords, or the model's likeliest domain name)
    hack.py        easy to hack: right without a chain of thought within N tries (needs a model)
    difficulty.py  pass rate of k sampled answers -> difficulty label (needs a model)
    balance.py     downsample domains to target proportions

Each module holds its filter's settings (the `curate.<name>` config section), its pure logic
and the step over the rows. rows.py is the record a prompt carries through them; sampler.py
is the batched, cached 'k answers per prompt -> rewards' that hack and difficulty share.
"""
