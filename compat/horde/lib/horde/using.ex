defmodule Horde.Using do
  @moduledoc false
  # The body of `use Horde.Registry` and `use Horde.DynamicSupervisor`: the behaviour and an
  # overridable child_spec/1 that starts the using module as a supervisor, merged with the
  # options given to `use`.

  @spec quoted(module(), keyword()) :: Macro.t()
  def quoted(behaviour, options) do
    quote location: :keep, bind_quoted: [behaviour: behaviour, options: options] do
      @behaviour behaviour

      if Module.get_attribute(__MODULE__, :doc) == nil do
        @doc """
        Returns a specification to start this module under a supervisor.
        See `Supervisor`.
        """
      end

      @impl true
      def child_spec(arg) do
        default = %{
          id: __MODULE__,
          start: {__MODULE__, :start_link, [arg]},
          type: :supervisor
        }

        Supervisor.child_spec(default, unquote(Macro.escape(options)))
      end

      defoverridable child_spec: 1
    end
  end
end
