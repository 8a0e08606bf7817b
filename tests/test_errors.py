"""Errors cross the kernel/host line as one record, typed by one table on each side."""

from __future__ import annotations

import pytest

from rlm_kernel import errors, runtime
from rlm_kernel.record import ErrorRecord


def test_every_wire_type_is_an_exception_the_kernel_code_sees():
    host_types = {name for _, name in errors.WIRE_TYPES}
    assert host_types <= set(runtime.ERROR_TYPES)
    for name, cls in runtime.ERROR_TYPES.items():
        assert cls.__name__ == name and issubclass(cls, Exception)
    assert set(errors.HOST_CLASSES) <= host_types


@pytest.mark.parametrize(
    ("exc", "wire", "message"),
    [
        (errors.BudgetExceeded("sub-call", 3, 3), "BudgetExceeded", "sub-call budget exhausted"),
        (errors.ReplayMiss("never sent"), "ReplayMiss", "never sent"),
        (errors.ModelError("openai:m", "HTTP 500"), "SubcallError", "openai:m: HTTP 500"),
        (ValueError("no"), "SubcallError", "ValueError: no"),
        (RuntimeError(), "SubcallError", "RuntimeError"),
        (errors.SubcallFailed("as recorded", wire_type="BudgetExceeded"), "BudgetExceeded", "as"),
    ],
)
def test_host_exceptions_become_records(exc, wire, message):
    record = ErrorRecord.from_exception(exc)
    assert record.type == wire and record.message.startswith(message)
    assert ErrorRecord.from_metadata(record.to_metadata()) == record
    again = record.to_exception()
    assert (errors.wire_type(again), str(again)) == (record.type, record.message)


def test_format_1_strings_are_read_as_records():
    assert ErrorRecord.from_metadata("BudgetExceeded: spent") == ErrorRecord(
        "BudgetExceeded", "spent"
    )
    assert ErrorRecord.from_metadata("ValueError: no") == ErrorRecord(
        "SubcallError", "ValueError: no"
    )
    assert ErrorRecord.from_metadata(None) is None
