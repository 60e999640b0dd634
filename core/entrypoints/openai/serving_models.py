"""Model names as the API sees them: the base model, its adapters, and runtime (un)loading."""

from __future__ import annotations

import asyncio
import itertools
import logging
import os
import time
from typing import TYPE_CHECKING, Any

from loraserve.entrypoints.openai.errors import NotFoundError
from loraserve.entrypoints.openai.schema import LoadLoRAAdapterRequest, UnloadLoRAAdapterRequest
from loraserve.entrypoints.openai.server_config import LoRAModulePath
from loraserve.errors import InvalidRequestError, LoRAAdapterError, LoRANotFoundError
from loraserve.lora.request import LoRARequest

if TYPE_CHECKING:
    from loraserve.engine.async_engine import AsyncLLMEngine

# user-given names and paths are logged with %r, so a newline in one cannot forge a log line
logger = logging.getLogger(__name__)

OWNED_BY = "loraserve"


class ServingModels:
    """Maps request ``model`` names to the base model or a ``LoRARequest``.

    Resolvers are consulted only when runtime updating is enabled, as in vLLM: a server
    started without it never loads an adapter the operator did not name.
    """

    def __init__(
        self, engine: AsyncLLMEngine, allow_runtime_lora_updating: bool, aliases: list[str] = ()
    ) -> None:
        self.engine = engine
        self.allow_runtime_lora_updating = allow_runtime_lora_updating
        self.aliases = [a for a in dict.fromkeys(aliases) if a != engine.served_model_name]
        self._ids = itertools.count(1)
        self._replacing = asyncio.Lock()
        self._being_replaced: dict[str, asyncio.Event] = {}  # name -> set once it is back

    @property
    def base_model_name(self) -> str:
        return self.engine.served_model_name

    @property
    def base_model_names(self) -> list[str]:
        """Every name of the base model: the served name first, then its aliases."""
        return [self.base_model_name, *self.aliases]

    def _card(self, model_id: str, root: str, parent: str | None, now: int) -> dict[str, Any]:
        return {
            "id": model_id,
            "object": "model",
            "created": now,
            "owned_by": OWNED_BY,
            "root": root,
            "parent": parent,
            "max_model_len": self.engine.max_model_len,
            "permission": [],
        }

    def list_models(self) -> dict[str, Any]:
        """``GET /v1/models``: the base (under each of its names) first, then adapters in load
        order."""
        now = int(time.time())
        base = self.base_model_name
        cards = [self._card(name, self.engine.model_path, None, now) for name in self.base_model_names]
        for lora in self.engine.list_loras():
            cards.append(self._card(lora.lora_name, lora.lora_path, lora.base_model_name or base, now))
        return {"object": "list", "data": cards}

    def model_card(self, model_id: str) -> dict[str, Any]:
        """``GET /v1/models/{id}``: the card ``/v1/models`` lists under that id (no resolver
        is asked: retrieving a model never loads one)."""
        for card in self.list_models()["data"]:
            if card["id"] == model_id:
                return card
        raise LoRANotFoundError(model_id)

    async def resolve(self, model: str | None) -> LoRARequest | None:
        """None for the base model (or no ``model``); raises LoRANotFoundError (404)."""
        if model is None or model in self.base_model_names:
            return None
        if (replaced := self._being_replaced.get(model)) is not None:
            await replaced.wait()  # served the new weights (or the old, put back), never a 404
        return await self.engine.resolve_model(model, allow_resolvers=self.allow_runtime_lora_updating)

    def _loaded(self, name: str) -> LoRARequest | None:
        return next((lr for lr in self.engine.list_loras() if lr.lora_name == name), None)

    async def add(self, name: str, path: str, base_model_name: str | None = None) -> LoRARequest:
        """Load one adapter; shared by start-up ``--lora-modules`` and the load endpoint."""
        if self._loaded(name) is not None:
            raise InvalidRequestError(f"The lora adapter '{name}' has already been loaded.")
        if name in self.base_model_names:
            raise InvalidRequestError(
                f"The lora adapter '{name}' has the same name as the base model; choose another"
            )
        if not os.path.isdir(path):
            raise NotFoundError(
                f"LoRA adapter '{name}': path '{path}' does not exist or is not a directory"
            )
        if base_model_name in self.aliases:  # another name of the same base model
            base_model_name = None
        if base_model_name not in (None, self.base_model_name):
            # vLLM keeps the lineage only when it names a served model; say so instead of hiding it
            logger.warning(
                "LoRA adapter %r: base_model_name %r is not the served model %r; listing it "
                "under %r", name, base_model_name, self.base_model_name, self.base_model_name,
            )
            base_model_name = None
        request = LoRARequest(name, next(self._ids), path, base_model_name=base_model_name)
        loaded = await self.engine.add_lora(request)  # the LoRA manager logs the load
        return loaded if isinstance(loaded, LoRARequest) else request

    async def load_static(self, modules: list[LoRAModulePath]) -> None:
        """Load ``--lora-modules`` at start-up; the first failure stops start-up, naming it."""
        for module in modules:
            try:
                await self.add(module.name, module.path, module.base_model_name)
            except (InvalidRequestError, LoRAAdapterError, NotFoundError) as exc:
                reason = exc.reason if isinstance(exc, LoRAAdapterError) else str(exc)
                raise LoRAAdapterError(
                    module.name, f"--lora-modules item could not be loaded from '{module.path}': {reason}"
                ) from exc

    async def load(self, request: LoadLoRAAdapterRequest) -> str:
        """``POST /v1/load_lora_adapter``; returns the contract's success text."""
        if not request.lora_name or not request.lora_path:
            raise InvalidRequestError("Both 'lora_name' and 'lora_path' must be provided.")
        # a relative path means the server's working directory: name it in full in /v1/models
        path = os.path.abspath(request.lora_path)
        if request.load_inplace and self._loaded(request.lora_name) is not None:
            await self._replace(request.lora_name, path)
        else:
            await self.add(request.lora_name, path)
        return f"Success: LoRA adapter '{request.lora_name}' added successfully"

    async def _replace(self, name: str, path: str) -> None:
        """vLLM's ``load_inplace``: new weights under a loaded name, as unload then load under
        a new int id (an adapter that fails to load puts the old one back). A request already
        running keeps the adapter it pinned at admission and finishes on the old weights; one
        admitted after gets the new; none sees a mix. A request naming the adapter while it is
        replaced waits for the replacement. One replacement at a time."""
        if not os.path.isdir(path):
            raise NotFoundError(
                f"LoRA adapter '{name}': path '{path}' does not exist or is not a directory")
        async with self._replacing:
            old = self._loaded(name)
            self._being_replaced[name] = done = asyncio.Event()
            try:
                await self.engine.remove_lora(name)
                try:
                    await self.add(name, path, old.base_model_name if old else None)
                except Exception:
                    if old is not None:  # put the old weights back under the name
                        await self.add(name, old.lora_path, old.base_model_name)
                    raise
            finally:
                del self._being_replaced[name]
                done.set()
        logger.info("Replaced LoRA adapter %r with the weights in %r", name, path)

    async def unload(self, request: UnloadLoRAAdapterRequest) -> str:
        """``POST /v1/unload_lora_adapter``; by name, or by ``lora_int_id`` alone."""
        name = request.lora_name
        if not name and request.lora_int_id is None:
            raise InvalidRequestError("Either 'lora_name' or 'lora_int_id' needs to be provided.")
        if not name:
            found = [lr for lr in self.engine.list_loras() if lr.lora_int_id == request.lora_int_id]
            if not found:
                raise NotFoundError(
                    f"The lora adapter with lora_int_id {request.lora_int_id} cannot be found."
                )
            name = found[0].lora_name
        if self._loaded(name) is None:
            raise NotFoundError(f"The lora adapter '{name}' cannot be found.")
        await self.engine.remove_lora(name)
        logger.info("Removed LoRA adapter %r", name)
        return f"Success: LoRA adapter '{name}' removed successfully"
