from __future__ import annotations

from typing import Any

from rest_framework import serializers


class StrictSerializerMixin:
    """Unknown fields are an error, not silently dropped: a typo must not look like success."""

    def to_internal_value(self, data: Any) -> Any:
        if isinstance(data, dict):
            writable = {name for name, f in self.fields.items() if not f.read_only}  # type: ignore[attr-defined]
            unknown = sorted(set(data) - writable)
            if unknown:
                raise serializers.ValidationError({name: ["Unknown field."] for name in unknown})
        elif data is not None:
            raise serializers.ValidationError({"non_field_errors": ["Expected a JSON object."]})
        return super().to_internal_value(data)  # type: ignore[misc]


class StrictModelSerializer(StrictSerializerMixin, serializers.ModelSerializer):
    pass


class StrictSerializer(StrictSerializerMixin, serializers.Serializer):
    pass
