"""Zips built in tests: the same files give the same bytes (a fixed timestamp per entry), so
a test comparing two runs' storage never differs by the second a zip was made in."""
import io
import zipfile

FIXED_TIME = (2026, 1, 1, 0, 0, 0)


def zip_bytes(files):
    """{name: str or bytes} as a zip's bytes."""
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as archive:
        for name, data in files.items():
            archive.writestr(zipfile.ZipInfo(name, date_time=FIXED_TIME), data)
    return buffer.getvalue()
