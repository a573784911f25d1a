"""The one way to open a session file, whatever form it ships in.

``<session>.hdf5`` is the official format (:class:`~emgscale.data.session.EMGSession`); a ``.vhdr`` is a
recording of the BIDS copy (:class:`~emgscale.data.bids.BIDSSession`, same interface). Every reader —
windows, shards, the feature cache, evaluation, streaming, ``data info`` — opens sessions here.
"""

from __future__ import annotations

from pathlib import Path

from emgscale.data.session import EMGSession


def open_session(path: "str | Path", bids_metadata: "str | Path | None" = None) -> EMGSession:
    """Open a session read-only: an HDF5 session file, or a BIDS recording's ``.vhdr``.

    Args:
        path: the session file.
        bids_metadata: for a BIDS recording whose root has no ``metadata.csv``, the one the copy was made
            from (gives the session its HDF5 name and user id); ignored for HDF5 files.

    Returns:
        An :class:`EMGSession` (a :class:`~emgscale.data.bids.BIDSSession` for ``.vhdr``); close it or use
        it as a context manager.

    Raises:
        DataError: the file is missing or malformed (naming it).
    """
    if Path(path).suffix.lower() == ".vhdr":
        from emgscale.data.bids import BIDSSession  # noqa: PLC0415 (only BIDS users pay for it)

        return BIDSSession(path, bids_metadata)
    return EMGSession(path)


def data_files(session: EMGSession) -> list[Path]:
    """The files a session's content is read from (its identity on disk): the HDF5 file; for a BIDS
    recording the header, the binary data and the events file."""
    from emgscale.data.bids import BIDSSession, sidecar  # noqa: PLC0415

    if isinstance(session, BIDSSession):
        return [session.path, session.header.data_file, sidecar(session.path, "events.tsv")]
    return [session.path]


def data_bytes(session: EMGSession) -> int:
    """Bytes of the session's files on disk (:func:`data_files`)."""
    return sum(p.stat().st_size for p in data_files(session))
