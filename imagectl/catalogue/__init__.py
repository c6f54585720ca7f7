"""The catalogue: TUF metadata of published images (publisher side: state, publish, keys, trust, gc; reader side:
client, fetcher), its format checks, verification, mirrors and exports of record."""
