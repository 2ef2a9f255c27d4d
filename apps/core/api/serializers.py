from __future__ import annotations

from collections.abc import Callable
from typing import Any

from django.core.exceptions import ImproperlyConfigured, ObjectDoesNotExist
from django.db import models
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


# --- related fields scoped to the request user ---------------------------------------------------------
def request_user(context: dict[str, Any]) -> Any:
    request = context.get("request")
    return getattr(request, "user", None)


class ScopedRelatedField(serializers.RelatedField):
    """Marker base: a related field whose queryset is computed per request from the signed-in user."""

    def scoped_queryset(self, user: Any) -> Any:
        raise NotImplementedError

    def get_queryset(self) -> Any:
        return self.scoped_queryset(request_user(self.context))


class ScopedPrimaryKeyRelatedField(ScopedRelatedField, serializers.PrimaryKeyRelatedField):
    """The id of a tenant row, resolved through `Model.objects.for_user(request.user, action)`.

    An id outside the user's reach reads exactly like one that does not exist (a 400 field error), so a
    payload can never attach a row to another organisation's project."""

    def __init__(self, model: type[models.Model], action: str | None = None, **kwargs: Any) -> None:
        self.scoped_model = model
        self.scoped_action = action
        if not kwargs.get("read_only"):
            # never evaluated (get_queryset replaces it per request); it names the model for schema generation
            kwargs["queryset"] = model.objects.all_tenants().none()  # type: ignore[attr-defined]
        super().__init__(**kwargs)

    def scoped_queryset(self, user: Any) -> Any:
        return self.scoped_model.objects.for_user(user, self.scoped_action)  # type: ignore[attr-defined]

    def to_internal_value(self, data: Any) -> Any:
        # an id is an integer (or its digits as text): true, 1.5 or "1e0" would otherwise be read as pk 1
        if isinstance(data, bool) or not (isinstance(data, int) or (isinstance(data, str) and data.isdigit())):
            self.fail("incorrect_type", data_type=type(data).__name__)
        return super().to_internal_value(data)


class ScopedSlugRelatedField(ScopedRelatedField, serializers.SlugRelatedField):
    """A row named by a slug-like field (case-insensitive), looked up in `queryset_for(request.user)`."""

    def __init__(
        self, *, slug_field: str, queryset_for: Callable[[Any], Any], model: type[models.Model], **kwargs: Any
    ) -> None:
        self.queryset_for = queryset_for
        if not kwargs.get("read_only"):
            kwargs["queryset"] = model._default_manager.none()
        super().__init__(slug_field=slug_field, **kwargs)

    def scoped_queryset(self, user: Any) -> Any:
        return self.queryset_for(user)

    def to_internal_value(self, data: Any) -> Any:
        if not isinstance(data, str) or not data or len(data) > 254:
            self.fail("invalid")
        try:
            return self.get_queryset().get(**{f"{self.slug_field}__iexact": data})
        except ObjectDoesNotExist:
            self.fail("does_not_exist", slug_name=self.slug_field, value=data)
        except (TypeError, ValueError):
            self.fail("invalid")


# Model serializer for tenant rows written through services. Every writable relation must be a
# `ScopedRelatedField` (checked when the fields are built), and the model-level uniqueness validators are left
# out: they would query unscoped, and the services check uniqueness themselves. (A comment, not a docstring:
# the schema would show a docstring as the description of every subclass.)
class TenantModelSerializer(StrictModelSerializer):
    def get_validators(self) -> list[Any]:
        return []

    def get_fields(self) -> dict[str, serializers.Field]:
        fields = super().get_fields()
        for name, field in fields.items():
            relation = field.child_relation if isinstance(field, serializers.ManyRelatedField) else field
            writable = isinstance(relation, serializers.RelatedField) and not field.read_only
            if writable and not isinstance(relation, ScopedRelatedField):
                raise ImproperlyConfigured(
                    f"{type(self).__name__}.{name}: writable relations must be scoped to the request user "
                    "(use ScopedPrimaryKeyRelatedField)."
                )
        return fields
